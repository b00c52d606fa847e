"""Training configuration: one dataclass per concern, filled from a recipe and `key=value` overrides.

    config = load_config("recipes/simclr_small.yaml", ["optim.lr=0.5", "train.epochs=2"])

A recipe (YAML) overrides the defaults below; an override replaces one value, given in YAML
syntax (`data.batch_size=512`, `method.projector=[2048,128]`), each key at most once (a second
override of a key is refused, not left to win). Every key and value is checked against its
field's type, and an error names the file or override and the key at fault.
The `method` section's fields depend on `method.name` (each method declares its own `Config`).
The choices of `method.name`, `model.backbone` and `optim.name` are the keys of their registries
(`sslpipe.methods.METHODS`, `sslpipe.models.BACKBONES`, `sslpipe.optim.OPTIMIZERS`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from sslpipe.errors import SslpipeError
from sslpipe.files import shipped_recipe
from sslpipe.methods import METHODS
from sslpipe.models import BACKBONES
from sslpipe.optim import OPTIMIZERS, SCALE_RULES
from sslpipe.typed import build, yaml_problem


@dataclass(frozen=True)
class DataConfig:
    train: str = "demo-out/shards/train-*.tar"  # shard pattern or brace list, `.idx` beside each tar
    pipeline: str = "simclr"       # a shipped spec's name or a YAML path
    size: int | None = None        # rescale the spec: its first view to this size (None: as written)
    batch_size: int = 256          # global: over all processes (the papers' B); must divide evenly
    decode: Literal["once", "roi"] = "once"
    num_threads: int | None = None  # DALI threads per process (default: this process's share)
    shuffle_buffer: int = 4096
    channels_last: bool = True

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 (or null: this process's share of the cores), "
                             f"got {self.num_threads}")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 (or null: the spec's own sizes), got {self.size}")
        if self.shuffle_buffer < 1:  # DALI crashes the process on 0 or less
            raise ValueError(f"shuffle_buffer must be >= 1, got {self.shuffle_buffer}")


@dataclass(frozen=True)
class ModelConfig:
    backbone: Literal[tuple(BACKBONES)] = "resnet50"
    small_images: bool = False     # 3x3 stride-1 stem and no max-pool, for 32-96 px images
    zero_init_residual: bool = False
    sync_bn: bool = False          # BatchNorm over the global batch (GlobalBatchNorm2d and 1d)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal[tuple(OPTIMIZERS)] = "sgd"
    lr: float = 0.05               # base rate, scaled by `lr_scaling` from the global batch size
    lr_scaling: Literal[SCALE_RULES] = "linear"  # lr*B/256, lr*sqrt(B), or lr as is
    final_lr_ratio: float = 0.0    # the cosine ends at this fraction of the peak rate
    warmup_epochs: float = 0.0     # linear warmup from 0, then cosine
    weight_decay: float = 1e-4
    final_weight_decay: float | None = None  # a cosine from weight_decay to this (DINO); None: constant
    momentum: float = 0.9          # SGD's and LARS's momentum; Adam's beta1
    beta2: float = 0.999           # Adam's second-moment decay
    eta: float = 0.001             # LARS trust coefficient
    exclude_bias_and_norm: bool = False  # no weight decay (nor LARS adaptation) on 1-D parameters
    clip_grad_norm: float | None = None

    def __post_init__(self):
        for name in ("lr", "weight_decay", "final_lr_ratio", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.final_lr_ratio > 1:
            raise ValueError(f"final_lr_ratio must be <= 1 (the cosine decays), got {self.final_lr_ratio}")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        if self.final_weight_decay is not None and self.final_weight_decay < 0:
            raise ValueError(f"final_weight_decay must be >= 0, got {self.final_weight_decay}")
        for name in ("momentum", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            # torch would scale the gradient by a negative factor: a step uphill
            raise ValueError(f"clip_grad_norm must be > 0 (or null: no clipping), got {self.clip_grad_norm}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100
    seed: int = 0
    out: str = "out"               # runs go to <out>/<run>/
    run: str | None = None         # default: the recipe's file name
    precision: Literal["auto", "bf16", "fp16", "no"] = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    checkpoint_every: int = 0      # steps; 0: at the end of each epoch only
    keep_checkpoints: int = 2      # the newest step checkpoints kept (`last.pt` always)
    log_every: int = 10            # steps between metrics.jsonl lines
    # A nan/inf loss: "stop" before the weights change; "skip" the update and count it (the
    # forward already ran: MoCo's and SwAV's queues keep that step's keys).
    nonfinite_loss: Literal["stop", "skip"] = "stop"
    max_steps: int | None = None   # stop after this many steps in all (schedules still span epochs)

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, name) < (1 if name == "log_every" else 0):
                raise ValueError(f"{name} must be >= {1 if name == 'log_every' else 0}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (or null: every epoch), got {self.max_steps}")
        run = Path(self.run or ".")
        if self.run is not None and (not self.run or run.is_absolute() or ".." in run.parts):
            # the run folder is <out>/<run>: a run name that leaves `out` would write elsewhere
            raise ValueError(f"run must be a name (or a relative path) inside train.out, got {self.run!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Online weighted kNN on a labelled held-out split during pretraining (off without `val`)."""

    val: str | None = None         # labelled shards held out from training, e.g. out/val-*.tar
    train: str | None = None       # the kNN's labelled memory (default: data.train)
    pipeline: str = "eval"         # centre crop, no randomness
    size: int | None = None        # the eval and fine-tune specs rescaled to this size (64 for 64 px
                                   # recipes); None: the specs' own (224)
    finetune_pipeline: str = "finetune"  # random crops and flips, for fine-tuning and augmented probes
    every_epochs: int = 1          # 0: never during training
    knn_k: int | None = None       # default: 200, or 20 for small sets (eval.knn.default_k)
    knn_temperature: float = 0.07
    batch_size: int = 256          # per process

    def __post_init__(self):
        if self.every_epochs < 0 or self.batch_size < 1 or self.knn_temperature <= 0:
            raise ValueError("every_epochs >= 0, batch_size >= 1 and knn_temperature > 0 are required")
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1 (or null: the specs' own), got {self.size}")
        if self.knn_k is not None and self.knn_k < 1:
            raise ValueError(f"knn_k must be >= 1 (or null: the default), got {self.knn_k}")


@dataclass(frozen=True)
class Config:
    method_name: str               # a key of sslpipe.methods.METHODS
    method: object                 # that method's own Config dataclass
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        """The sections as plain data, the method's name inside its section (as a recipe has it)."""
        data = dataclasses.asdict(self)
        return {"method": {"name": data.pop("method_name"), **data.pop("method")}, **data}


SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig,
            "eval": EvalConfig}


def load_config(recipe: str | Path | None, overrides: list[str] = ()) -> Config:
    """The recipe's values over the defaults, then each `key=value` override over those."""
    data, source = {}, "<defaults>"
    if recipe is not None:
        path = Path(recipe)
        if not path.suffix and not path.exists() and shipped_recipe(str(recipe)).is_file():
            path = recipe = shipped_recipe(str(recipe))  # a shipped recipe by name
        if not path.is_file():
            raise SslpipeError(f"{path}: no such recipe file")
        source = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SslpipeError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
        if not isinstance(data, dict):
            raise SslpipeError(f"{path}: a recipe is a mapping of sections (method, {', '.join(SECTIONS)})")
    run = Path(recipe).stem if recipe else "run"
    config = parse_config(data, source, run)
    given = {}  # section.key -> the override that set it
    for override in overrides:  # checked one by one, so that an error names the override at fault
        key = _apply_override(data, override)
        if key in given:  # the last would win without a word, whichever the user meant
            raise SslpipeError(f"override {override!r}: {key}: already set by override {given[key]!r} "
                               f"(give each key once)")
        given[key] = override
        config = parse_config(data, f"override {override!r}", run)
    return config


def parse_config(data: dict, source: str, default_run: str = "run") -> Config:
    unknown = sorted(set(data) - {"method", *SECTIONS})
    if unknown:
        raise SslpipeError(f"{source}: {unknown[0]}: unknown section "
                           f"(expected method, {', '.join(SECTIONS)})")
    method = data.get("method")
    if not isinstance(method, dict) or "name" not in method:
        raise SslpipeError(f"{source}: method.name: required (one of {', '.join(METHODS)})")
    method = dict(method)
    name = method.pop("name")
    if name not in METHODS:
        raise SslpipeError(f"{source}: method.name: unknown method {name!r} (one of {', '.join(METHODS)})")
    sections = {key: build(cls, data.get(key) or {}, key, source) for key, cls in SECTIONS.items()}
    if sections["train"].run is None:
        sections["train"] = dataclasses.replace(sections["train"], run=default_run)
    return Config(method_name=name, method=build(METHODS[name].Config, method, "method", source), **sections)


def _apply_override(data: dict, override: str) -> str:
    """`section.key=value` (value in YAML syntax) into the nested mapping `data`; returns `section.key`."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) != 2 or not all(parts):
        raise SslpipeError(f"override {override!r}: expected section.key=value, e.g. optim.lr=0.5")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SslpipeError(f"override {override!r}: the value is not valid YAML: {yaml_problem(e)}") from None
    section, name = parts
    if section != "method" and section not in SECTIONS:
        raise SslpipeError(f"override {override!r}: {section}: unknown section "
                           f"(expected method, {', '.join(SECTIONS)})")
    current = data.setdefault(section, {})
    if not isinstance(current, dict):
        raise SslpipeError(f"override {override!r}: {section} is not a mapping in the recipe")
    current[name] = value
    return f"{section}.{name}"
