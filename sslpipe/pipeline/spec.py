"""Pipeline specs: the views of a recipe, declared in YAML and loaded into frozen dataclasses.

A spec is a list of view groups (`pipelines/*.yaml`). Each group makes `count` views of every
image: a crop and flip (DALI), then the photometric ops of the table (`sslpipe.pipeline.ops`:
color jitter, grayscale, blur, solarize, in that order, as in SimCLR, BYOL and SwAV), then any
Kornia transforms, then the normalization. `load_spec` checks every key and value and names the
file and key at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sslpipe.errors import SslpipeError
from sslpipe.files import shipped_folder
from sslpipe.pipeline.ops import OPS, Blur, ColorJitter, Grayscale, Solarize
from sslpipe.pipeline.ops.base import probability
from sslpipe.pipeline.ops.kornia_transforms import KorniaTransform, parse_kornia
from sslpipe.typed import build, yaml_problem

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")

__all__ = ["Blur", "ColorJitter", "Grayscale", "KorniaTransform", "Normalize", "PipelineSpec", "Solarize",
           "ViewSpec", "load_spec", "parse_spec", "shipped_specs"]


def _range(name: str, values: tuple[float, float], low: float, high: float) -> None:
    a, b = values
    if not (low < a <= b <= high):
        raise ValueError(f"{name} must be [low, high] with low <= high, both in ({low}, {high}], "
                         f"got {list(values)}")


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

    `ops` holds the settings of the photometric ops the view uses (instances of the table's
    settings classes, kept in table order); `view.blur`, `view.color_jitter`, ... read them (None
    when unused). `ViewSpec.create(name=..., size=..., blur=Blur(p=1.0), grayscale=0.2)` builds
    one from keyword arguments as YAML names them.
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
    ops: tuple = ()
    kornia: tuple[KorniaTransform, ...] = ()
    normalize: Normalize | None = field(default_factory=Normalize)

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")
        _range("scale", self.scale, 0.0, 1.0)
        _range("ratio", self.ratio, 0.0, math.inf)
        if self.resize is not None and self.resize < self.size:
            raise ValueError(f"resize ({self.resize}) must be >= size ({self.size})")
        probability("flip", self.flip)
        by_class = {op.Settings: key for key, op in OPS.items()}
        keys = []
        for settings in self.ops:
            if type(settings) not in by_class:
                raise ValueError(f"ops: {settings!r} is not the settings of an op of the table "
                                 f"({', '.join(OPS)})")
            keys.append(by_class[type(settings)])
        if len(set(keys)) != len(keys):
            raise ValueError(f"ops: each op at most once, got {keys}")
        # Table order, and no op that never runs (p = 0): equal views compare equal.
        ordered = tuple(s for key in OPS for s, k in zip(self.ops, keys) if k == key and s.p > 0)
        object.__setattr__(self, "ops", ordered)

    @classmethod
    def create(cls, **values) -> ViewSpec:
        """A view from keyword arguments: its fields, and op settings by their YAML keys, as in YAML
        (`True`: the defaults; a number: the probability, other settings at their defaults)."""
        given = tuple(values.pop("ops", ()))
        ops = [_settings_of(op.Settings, value) for key, op in OPS.items()
               if (value := values.pop(key, None)) is not None and value is not False]
        return cls(**values, ops=(*given, *ops))

    def op(self, key: str):
        """The settings of the table's op `key`, or None when the view does not use it."""
        settings = OPS[key].Settings
        return next((s for s in self.ops if type(s) is settings), None)

    def __getattr__(self, name: str):
        if name in OPS:
            return self.op(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def resize_to(self) -> int:
        """The shorter side before a center crop."""
        return self.resize if self.resize is not None else round(self.size / 0.875)

    @property
    def random(self) -> bool:
        """Whether the view draws random numbers (an evaluation view does not)."""
        return self.crop == "random" or self.flip > 0 or bool(self.ops) or bool(self.kornia)

    def to_dict(self) -> dict:
        """The view as YAML writes it (op settings under their keys)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("ops", "kornia")}
        data["normalize"] = dataclasses.asdict(self.normalize) if self.normalize else None
        for key in OPS:
            settings = self.op(key)
            data[key] = _settings_dict(settings) if settings is not None else None
        data["kornia"] = [{t.name: dict(t.args)} for t in self.kornia]
        return json.loads(json.dumps(data))  # tuples as lists: plain data


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
        return any(g.random for g in self.groups)

    def describe(self) -> str:
        """`name (source): global 2 x 224 px, local 6 x 96 px`."""
        views = ", ".join(f"{g.name} {g.count} x {g.size} px" for g in self.groups)
        return f"{self.name} ({self.source}): {views}"

    def to_dict(self) -> dict:
        """What the spec does, as plain data (not where it came from)."""
        return {"views": [g.to_dict() for g in self.groups]}

    @property
    def fingerprint(self) -> str:
        """sha256 of `to_dict()`: equal for specs that make the same views, whatever their file."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def resized(self, size: int) -> PipelineSpec:
        """The spec at another size: every view scaled by `size / views[0].size`, a center crop's
        `resize` with it (so it cuts the same share of the image) and an explicit blur kernel size
        too (odd, at least 3); its name gains `@size`."""
        if size < 1:
            raise SslpipeError(f"a spec's size must be >= 1, got {size}")
        factor = size / self.views[0].size

        def scaled(g: ViewSpec) -> ViewSpec:
            resize = max(1, round(g.resize_to * factor)) if g.crop == "center" else g.resize
            ops = tuple(dataclasses.replace(s, kernel_size=_odd(s.kernel_size * factor))
                        if isinstance(s, Blur) and s.kernel_size is not None else s for s in g.ops)
            return dataclasses.replace(g, size=max(1, round(g.size * factor)), resize=resize, ops=ops)

        groups = tuple(scaled(g) for g in self.groups)
        return dataclasses.replace(self, name=f"{self.name}@{size}", groups=groups)


def _settings_dict(settings) -> dict:
    """An op's settings as plain data, less the fields marked `omit_if_default` that hold their
    default (a setting added later leaves the fingerprints of the specs that do not use it alone)."""
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
            if not (f.metadata.get("omit_if_default") and getattr(settings, f.name) == f.default)}


def _odd(value: float) -> int:
    """The odd integer nearest to `value`, at least 3 (a blur kernel's size)."""
    return max(3, 2 * round((value - 1) / 2) + 1)


def _settings_of(settings: type, value):
    if value is True:
        return settings()
    if isinstance(value, (int, float)):
        return settings(p=float(value))
    return value


def differences(saved: object, current: object, where: str = "") -> list[str]:
    """`where: before -> now` for every leaf that differs between two plain-data trees."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current), key=str):
            found += differences(saved.get(key), current.get(key), f"{where}.{key}" if where else str(key))
        return found
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        return [d for i, (a, b) in enumerate(zip(saved, current)) for d in differences(a, b, f"{where}[{i}]")]
    return [] if saved == current else [f"{where}: {saved!r} -> {current!r}"]


def shipped_specs() -> dict[str, Path]:
    """The specs that ship with sslpipe, by name."""
    return {path.stem: path for path in sorted(shipped_folder("pipelines").glob("*.yaml"))}


def load_spec(spec: str | Path | PipelineSpec, size: int | None = None) -> PipelineSpec:
    """A spec from a YAML path, a shipped name (`"simclr"`), or a spec (returned as is); `size`
    rescales it (`PipelineSpec.resized`)."""
    if not isinstance(spec, PipelineSpec):
        spec = _read_spec(spec)
    return spec.resized(size) if size is not None and size != spec.views[0].size else spec


def _read_spec(spec: str | Path) -> PipelineSpec:
    path = Path(spec)
    if not path.suffix and not path.exists():
        shipped = shipped_specs()
        if str(spec) not in shipped:
            raise SslpipeError(f"no pipeline spec named {str(spec)!r}: give a YAML path or one of "
                               f"{sorted(shipped)}")
        path = shipped[str(spec)]
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise SslpipeError(f"{path}: cannot read the pipeline spec: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SslpipeError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
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
    groups = tuple(_parse_view(v, f"views[{i}]", source) for i, v in enumerate(views))
    name = data.get("name", Path(source).stem)
    try:
        return PipelineSpec(name=str(name), groups=groups, source=source)
    except ValueError as e:
        raise SslpipeError(f"{source}: {e}") from None


def _parse_view(data: object, where: str, source: str) -> ViewSpec:
    """A view mapping: ViewSpec's fields, the table's op keys and `kornia`."""
    if not isinstance(data, dict):
        raise SslpipeError(f"{source}: {where} must be a mapping, got {data!r}")
    fields = {key: value for key, value in data.items() if key not in OPS and key != "kornia"}
    settings = (_op_settings(op.Settings, data.get(key), f"{where}.{key}", source) for key, op in OPS.items())
    ops = tuple(s for s in settings if s is not None)
    kornia = parse_kornia(data.get("kornia"), f"{where}.kornia", source)
    return build(ViewSpec, fields, where, source, given={"ops": ops, "kornia": kornia},
                 also=(*OPS, "kornia"))


def _op_settings(settings: type, value: object, where: str, source: str):
    """`false`/`null`/absent: off; `true`: the defaults; a number p: the defaults with that probability."""
    if value is None or value is False:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isnan(value) or not 0 <= value <= 1:
            raise SslpipeError(f"{source}: {where} must be a probability in [0, 1], got {value}")
        return settings(p=float(value)) if value > 0 else None
    return build(settings, {} if value is True else value, where, source)
