"""The standard approach, as the baseline for the pipeline benchmark: a PyTorch DataLoader whose
workers read the same shards with webdataset, decode with PIL and augment each sample on its own.

With torchvision importable (GPU hosts), the views use torchvision.transforms as the official
SimCLR/MoCo/BYOL/SwAV code does; otherwise the same operations written with PIL the way
torchvision's PIL path does them (ImageEnhance for brightness/contrast/saturation, an HSV shift
for hue, ImageFilter.GaussianBlur as in MoCo's and SwAV's code, ImageOps.solarize).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.pipeline.spec import PipelineSpec, ViewSpec

RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS}


def torchvision_available() -> bool:
    try:
        import torchvision.transforms  # noqa: F401
        return True
    except Exception:  # missing, or wheels that do not load with this torch
        return False


def baseline_loader(spec: PipelineSpec, pattern: str, batch_size: int, workers: int, use_torchvision: bool):
    """DataLoader yielding (views, labels) like the library's loader, from per-sample transforms."""
    import webdataset as wds

    make_view = _torchvision_view if use_torchvision else _pil_view
    views = [make_view(view) for view in spec.views]

    def augment(sample):
        image, label = sample
        image = image.convert("RGB")
        return [view(image) for view in views], int(label)

    urls = [str(shard.path) for shard in resolve_shards(pattern)]
    dataset = (wds.WebDataset(urls, shardshuffle=False, empty_check=False)
               .decode("pil").to_tuple("jpg", "cls").map(augment))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)


def _torchvision_view(view: ViewSpec):
    from torchvision import transforms as T

    interpolation = T.InterpolationMode[view.interpolation.upper()]
    if view.crop == "center":
        steps = [T.Resize(view.resize_to, interpolation), T.CenterCrop(view.size)]
    else:
        steps = [T.RandomResizedCrop(view.size, view.scale, view.ratio, interpolation)]
    steps.append(T.RandomHorizontalFlip(view.flip))
    if view.color_jitter:
        j = view.color_jitter
        steps.append(T.RandomApply([T.ColorJitter(j.brightness, j.contrast, j.saturation, j.hue)], p=j.p))
    if view.grayscale:
        steps.append(T.RandomGrayscale(view.grayscale.p))
    if view.blur:
        steps.append(T.RandomApply([_PilBlur(view.blur.sigma)], p=view.blur.p))
    if view.solarize:
        steps.append(T.RandomSolarize(round(view.solarize.threshold * 255), p=view.solarize.p))
    steps.append(T.ToTensor())
    if view.normalize:
        steps.append(T.Normalize(view.normalize.mean, view.normalize.std))
    return T.Compose(steps)


class _PilBlur:
    """MoCo's and SwAV's Gaussian blur: PIL's filter with sigma drawn per image."""

    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))


def _pil_view(view: ViewSpec):
    def apply(image: Image.Image) -> torch.Tensor:
        if view.crop == "center":
            scale = view.resize_to / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 RESAMPLE[view.interpolation])
            left, top = (image.width - view.size) // 2, (image.height - view.size) // 2
            image = image.crop((left, top, left + view.size, top + view.size))
        else:
            image = image.resize((view.size, view.size), RESAMPLE[view.interpolation],
                                 box=_random_resized_box(image.size, view.scale, view.ratio))
        if random.random() < view.flip:
            image = ImageOps.mirror(image)
        if view.color_jitter and random.random() < view.color_jitter.p:
            image = _jitter(image, view.color_jitter)
        if view.grayscale and random.random() < view.grayscale.p:
            image = image.convert("L").convert("RGB")
        if view.blur and random.random() < view.blur.p:
            image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(*view.blur.sigma)))
        if view.solarize and random.random() < view.solarize.p:
            image = ImageOps.solarize(image, round(view.solarize.threshold * 255))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        if view.normalize:
            mean, std = (torch.tensor(v)[:, None, None] for v in (view.normalize.mean, view.normalize.std))
            x = (x - mean) / std
        return x

    return apply


def _random_resized_box(size, scale, ratio):
    """torchvision's RandomResizedCrop.get_params: 10 tries, then a centre crop clamped in ratio."""
    width, height = size
    area = width * height
    for _ in range(10):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = random.randint(0, width - w), random.randint(0, height - h)
            return left, top, left + w, top + h
    aspect = width / height
    w, h = (width, round(width / ratio[0])) if aspect < ratio[0] else (
        (round(height * ratio[1]), height) if aspect > ratio[1] else (width, height))
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def _jitter(image: Image.Image, jitter) -> Image.Image:
    def factor(s):
        return random.uniform(max(0.0, 1 - s), 1 + s)

    ops = []
    if jitter.brightness:
        ops.append(lambda im: ImageEnhance.Brightness(im).enhance(factor(jitter.brightness)))
    if jitter.contrast:
        ops.append(lambda im: ImageEnhance.Contrast(im).enhance(factor(jitter.contrast)))
    if jitter.saturation:
        ops.append(lambda im: ImageEnhance.Color(im).enhance(factor(jitter.saturation)))
    if jitter.hue:
        ops.append(lambda im: _shift_hue(im, random.uniform(-jitter.hue, jitter.hue)))
    random.shuffle(ops)
    for op in ops:
        image = op(image)
    return image


def _shift_hue(image: Image.Image, shift: float) -> Image.Image:
    """torchvision's PIL adjust_hue: shift the H channel of PIL's HSV, in uint8 steps."""
    h, s, v = image.convert("HSV").split()
    h = Image.fromarray((np.asarray(h, dtype=np.int16) + round(shift * 255)).astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")
