"""Pipeline specs: the views of a recipe, declared in YAML and loaded into frozen dataclasses.

A spec is a list of view groups (`pipelines/*.yaml`). Each group makes `count` views of every
image: a crop (DALI) followed by photometric augmentations (torch), in this order, as in
SimCLR, BYOL and SwAV: crop, flip, color jitter, grayscale, blur, solarize, normalize.
`load_spec` checks every key and value and names the file and key at fault.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sslpipe.errors import SslpipeError
from sslpipe.typed import build

# The shipped specs, by name (`load_spec("simclr")`), when sslpipe runs from a checkout or an
# editable install; otherwise pass a path.
SHIPPED = Path(__file__).resolve().parents[2] / "pipelines"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")


def _range(name: str, values: tuple[float, float], low: float, high: float, open_low: bool) -> None:
    a, b = values
    below = (lambda v: v <= low) if open_low else (lambda v: v < low)
    if below(a) or below(b) or a > high or b > high or a > b:
        interval = f"{'(' if open_low else '['}{low}, {high}]"
        raise ValueError(f"{name} must be [low, high] with low <= high, both in {interval}, "
                         f"got {list(values)}")


@dataclass(frozen=True)
class ColorJitter:
    """torchvision's ColorJitter applied with probability `p`.

    Brightness, contrast and saturation factors are drawn from U[max(0, 1-s), 1+s], the hue shift
    from U[-h, h] of a full turn; the four operations run in a random order per sample.
    """

    p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1

    def __post_init__(self):
        _probability("p", self.p)
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of a full turn), got {self.hue}")


@dataclass(frozen=True)
class Blur:
    """Gaussian blur with probability `p`, sigma drawn per sample from U[sigma].

    `kernel_size` (odd) defaults to about 10% of the view's size, as in SimCLR (23 px at 224).
    """

    p: float = 0.5
    sigma: tuple[float, float] = (0.1, 2.0)
    kernel_size: int | None = None

    def __post_init__(self):
        _probability("p", self.p)
        _range("sigma", self.sigma, 0.0, math.inf, open_low=True)
        if self.kernel_size is not None and (self.kernel_size < 1 or self.kernel_size % 2 == 0):
            raise ValueError(f"kernel_size must be a positive odd number, got {self.kernel_size}")


@dataclass(frozen=True)
class Solarize:
    """Invert the values at or above `threshold` (a fraction of the range) with probability `p`."""

    p: float = 0.2
    threshold: float = 0.5

    def __post_init__(self):
        _probability("p", self.p)
        _probability("threshold", self.threshold)


@dataclass(frozen=True)
class Normalize:
    """`(x - mean) / std` per channel, on values in [0, 1]."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self):
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {list(self.std)}")


@dataclass(frozen=True)
class ViewSpec:
    """One group of `count` views with the same recipe.

    `crop: random` is torchvision's RandomResizedCrop (area fraction in `scale`, aspect ratio in
    `ratio`); `crop: center` resizes the shorter side to `resize` (default `size / 0.875`, i.e.
    256 for 224) and takes the central `size` x `size` square, with no randomness.
    """

    name: str
    size: int
    count: int = 1
    crop: typing.Literal["random", "center"] = "random"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    resize: int | None = None
    interpolation: typing.Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bilinear"
    flip: float = 0.5
    color_jitter: ColorJitter | None = None
    grayscale: float = 0.0
    blur: Blur | None = None
    solarize: Solarize | None = None
    normalize: Normalize | None = field(default_factory=Normalize)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        _range("scale", self.scale, 0.0, 1.0, open_low=True)
        _range("ratio", self.ratio, 0.0, math.inf, open_low=True)
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")
        _probability("flip", self.flip)
        _probability("grayscale", self.grayscale)

    @property
    def blur_kernel(self) -> int:
        """The blur kernel size: as set, or the odd number nearest to 10% of `size` (at least 3)."""
        if self.blur is not None and self.blur.kernel_size is not None:
            return self.blur.kernel_size
        return max(3, 2 * round((self.size * 0.1 - 1) / 2) + 1)

    @property
    def resize_to(self) -> int:
        """The shorter side before a center crop."""
        return self.resize if self.resize is not None else round(self.size / 0.875)


@dataclass(frozen=True)
class PipelineSpec:
    """The views of a recipe, in the order the loader returns them."""

    name: str
    groups: tuple[ViewSpec, ...]
    source: str = "<memory>"

    def __post_init__(self):
        if not self.groups:
            raise ValueError("views must list at least one view")
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"view names must be unique, got {names}")

    @property
    def views(self) -> tuple[ViewSpec, ...]:
        """One entry per output view (each group repeated `count` times)."""
        return tuple(g for g in self.groups for _ in range(g.count))

    @property
    def random(self) -> bool:
        """Whether any view draws random numbers (an eval spec does not)."""
        return any(g.crop == "random" or g.flip > 0 or g.color_jitter or g.grayscale > 0
                   or g.blur or g.solarize for g in self.groups)


def load_spec(spec: str | Path | PipelineSpec) -> PipelineSpec:
    """A spec from a YAML path, a shipped name (`"simclr"`), or a spec (returned as is)."""
    if isinstance(spec, PipelineSpec):
        return spec
    path = Path(spec)
    if not path.suffix and not path.exists():
        path = SHIPPED / f"{spec}.yaml"
        if not path.is_file():
            shipped = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
            raise SslpipeError(f"no pipeline spec named {str(spec)!r}: give a YAML path or one of {shipped}")
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SslpipeError(f"{path}: cannot read the pipeline spec: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SslpipeError(f"{path}: not valid YAML: {e}") from None
    return parse_spec(data, str(path))


def parse_spec(data: object, source: str = "<memory>") -> PipelineSpec:
    """Build a spec from YAML data (`{name, views: [...]}`); errors name `source` and the key."""
    if not isinstance(data, dict):
        raise SslpipeError(f"{source}: a pipeline spec is a mapping with 'name' and 'views'")
    unknown = sorted(set(data) - {"name", "views"})
    if unknown:
        raise SslpipeError(f"{source}: unknown key {unknown[0]!r} (expected 'name' and 'views')")
    views = data.get("views")
    if not isinstance(views, list):
        raise SslpipeError(f"{source}: 'views' must be a list of view mappings")
    groups = tuple(build(ViewSpec, v, f"views[{i}]", source) for i, v in enumerate(views))
    name = data.get("name", Path(source).stem)
    try:
        return PipelineSpec(name=str(name), groups=groups, source=source)
    except ValueError as e:
        raise SslpipeError(f"{source}: {e}") from None
