"""The DALI stage: read the shards, decode each JPEG, take every view's crop and flip.

One pipeline reads one epoch of one rank: the loader builds a new one per epoch with that
epoch's shard order, so an epoch always starts at the beginning of the rank's samples (a reader
that loops on its own drifts by the dropped remainder each epoch) and DALI's random state is a
function of (seed, epoch, rank). Its outputs, per batch, by name: one uint8 HxWx3 tensor list
per view (on the GPU for `device="gpu"`), the raw `.cls` bytes, each sample's source
(`shard.tar:offset:key.jpg`, from which the loader derives the global sample index) and, when
asked, each view's crop window and flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sslpipe.pipeline.spec import PipelineSpec, ViewSpec

DecodeMode = Literal["once", "roi"]


@dataclass(frozen=True)
class DecoderOptions:
    """Settings of DALI's `mixed` (GPU) JPEG decoder; the CPU decoder ignores them.

    `hw_decoder_load` is the share of images sent to the hardware JPEG decoder (A100/H100) rather
    than the CUDA one; the hints preallocate its buffers for images up to that size, and the
    paddings grow device and pinned host buffers in steps to avoid reallocations.
    """

    hw_decoder_load: float = 0.9
    preallocate_width_hint: int = 0
    preallocate_height_hint: int = 0
    device_memory_padding: int = 16 << 20
    host_memory_padding: int = 8 << 20

    def __post_init__(self):
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")


@dataclass(frozen=True)
class EpochPlan:
    """What one rank's pipeline reads in one epoch."""

    tars: tuple[str, ...]      # this epoch's shard order (the same on every rank)
    indexes: tuple[str, ...]
    rank: int
    world_size: int
    shuffle: bool              # shuffle samples inside a buffer of `shuffle_buffer`
    shuffle_buffer: int
    seed: int                  # DALI's seed for this (seed, epoch, rank)


def build_pipeline(spec: PipelineSpec, plan: EpochPlan, batch_size: int, device: Literal["cpu", "gpu"],
                   device_id: int | None, num_threads: int, decode: DecodeMode = "once",
                   decoder: DecoderOptions = DecoderOptions(), prefetch: int = 2,
                   checkpoint: str | None = None, windows: bool = False) -> tuple[object, list[str]]:
    """A built DALI pipeline and the names of its outputs, in order: `view0`, `view1`, ... (one per
    view of `spec.views`), `labels`, `sources`; with `windows`, also per view `flip<i>` and, for
    random crops, `anchor<i>` and `shape<i>` (the crop window in source pixels, (y, x) and (h, w)),
    and `image_shape` (H, W, C) of every source image.

    `decode="once"` decodes each image once and crops it per view; `"roi"` decodes only each
    random view's region, once per view. A random crop is DALI's fused `random_resized_crop`
    (`image_random_crop` for ROI decoding); with `windows` it is the same distribution drawn by
    `random_crop_generator`, whose window is then cut out by `resize` (`image_slice` for ROI
    decoding), so the window can be returned. `checkpoint` (from `pipeline.checkpoint()`) resumes
    a pipeline of the same plan where that one stood.
    """
    from nvidia.dali import fn, pipeline_def, types  # heavy import, only when a loader starts

    interp = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR,
              "bicubic": types.INTERP_CUBIC, "lanczos": types.INTERP_LANCZOS3}
    decode_device = "mixed" if device == "gpu" else "cpu"
    gpu_hints = dict(
        hw_decoder_load=decoder.hw_decoder_load, preallocate_width_hint=decoder.preallocate_width_hint,
        preallocate_height_hint=decoder.preallocate_height_hint,
        device_memory_padding=decoder.device_memory_padding,
        host_memory_padding=decoder.host_memory_padding) if device == "gpu" else {}

    def center(image, view: ViewSpec):
        image = fn.resize(image, resize_shorter=view.resize_to, interp_type=interp[view.interpolation])
        return fn.crop(image, crop=(view.size, view.size))

    def fused_random(decoded, jpegs, view: ViewSpec):
        if decode == "roi":
            image = fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                                  random_area=view.scale, random_aspect_ratio=view.ratio,
                                                  **gpu_hints)
            return fn.resize(image, size=(view.size, view.size), interp_type=interp[view.interpolation])
        return fn.random_resized_crop(decoded(), size=(view.size, view.size), random_area=view.scale,
                                      random_aspect_ratio=view.ratio, interp_type=interp[view.interpolation])

    def windowed_random(decoded, jpegs, image_shape, view: ViewSpec):
        anchor, shape = fn.random_crop_generator(image_shape, random_area=view.scale,
                                                 random_aspect_ratio=view.ratio)
        if decode == "roi":
            image = fn.decoders.image_slice(jpegs, anchor, shape, device=decode_device, output_type=types.RGB,
                                            axes=[0, 1], normalized_anchor=False, normalized_shape=False,
                                            **gpu_hints)
            image = fn.resize(image, size=(view.size, view.size), interp_type=interp[view.interpolation])
        else:
            start = fn.cast(anchor, dtype=types.FLOAT)
            image = fn.resize(decoded(), size=(view.size, view.size), interp_type=interp[view.interpolation],
                              roi_start=start, roi_end=start + fn.cast(shape, dtype=types.FLOAT))
        return image, anchor, shape

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=plan.seed,
                  prefetch_queue_depth=prefetch, enable_checkpointing=True)
    def epoch_pipeline():
        jpegs, labels = fn.readers.webdataset(
            paths=list(plan.tars), index_paths=list(plan.indexes), ext=["jpg", "cls"], name="reader",
            shard_id=plan.rank, num_shards=plan.world_size, random_shuffle=plan.shuffle,
            initial_fill=plan.shuffle_buffer, pad_last_batch=True, missing_component_behavior="error")
        sources = fn.get_property(jpegs, key="source_info")
        cache = {}

        def decoded():  # decoded once, on first use, for every view that crops the whole image
            if "image" not in cache:
                cache["image"] = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB,
                                                   **gpu_hints)
            return cache["image"]

        image_shape = fn.peek_image_shape(jpegs) if windows else None
        views, extras = [], {}
        for i, view in enumerate(spec.views):
            if view.crop == "center":
                image = center(decoded(), view)
            elif windows:
                image, anchor, shape = windowed_random(decoded, jpegs, image_shape, view)
                extras[f"anchor{i}"], extras[f"shape{i}"] = anchor, shape
            else:
                image = fused_random(decoded, jpegs, view)
            if view.flip > 0:
                coin = fn.random.coin_flip(probability=view.flip)
                image = fn.flip(image, horizontal=coin)
                if windows:
                    extras[f"flip{i}"] = coin
            views.append(image)
        if windows:
            extras["image_shape"] = image_shape
        names[:] = [*(f"view{i}" for i in range(len(views))), "labels", "sources", *extras]
        return (*views, labels, sources, *extras.values())

    names: list[str] = []  # filled when DALI traces the graph
    pipe = epoch_pipeline(checkpoint=checkpoint) if checkpoint else epoch_pipeline()
    pipe.build()
    return pipe, names
