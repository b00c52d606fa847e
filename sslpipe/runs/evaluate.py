"""`sslpipe eval`: the evaluation protocols on a run's backbone and, for comparison, on a random
one; the table of their results."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from sslpipe.errors import SslpipeError
from sslpipe.eval.features import extract_features
from sslpipe.eval.finetune import augmented_linear_probe, finetune_subset
from sslpipe.eval.knn import knn_result
from sslpipe.eval.linear import linear_probe
from sslpipe.models import build_backbone
from sslpipe.pipeline.shardlist import resolve_shards
from sslpipe.pipeline.spec import load_spec
from sslpipe.runs.export import backbone_state, load_run_checkpoint
from sslpipe.train.run_folder import RunFolder


def evaluate_run(run: str | Path, *, train: str | None = None, val: str | None = None,
                 pipeline: str | None = None, finetune_pipeline: str | None = None, size: int | None = None,
                 semisup: tuple[float, ...] = (), random_baseline: bool = True,
                 knn_k: int | None = None, linear_epochs: int = 100, augmented_probe_epochs: int = 0,
                 finetune_epochs: int = 30, batch_size: int = 256, seed: int = 0,
                 device: str | None = None) -> dict:
    """Evaluate a run's backbone (its last checkpoint, or the checkpoint given) and, for
    comparison, a randomly initialised one: kNN, linear probe on precomputed features, the linear
    probe with augmentation when `augmented_probe_epochs` > 0, and fine-tuning on the `semisup`
    fractions. The shards, specs and size default to the run's `eval` section (`eval.pipeline`,
    `eval.finetune_pipeline`, `eval.size`). Writes `<run>/eval.json` and returns its content."""
    # Every input is checked before the first feature is extracted (minutes on a large set).
    device = _device(device)
    path = RunFolder.find_checkpoint(run)
    folder = RunFolder.of_checkpoint(path)
    try:  # eval.json is written at the end
        with tempfile.TemporaryFile(dir=folder.path):
            pass
    except OSError as e:
        raise SslpipeError(f"{folder.path}: cannot write into the run folder (for eval.json): "
                           f"{e.strerror}") from None
    checkpoint = load_run_checkpoint(path)
    config = checkpoint["config"]
    model = config["model"]
    small_images = model.get("small_images", False)
    pretrained = build_backbone(model["backbone"], small_images=small_images)
    pretrained.load_state_dict(backbone_state(checkpoint, path))
    train, train_source = _setting(config, train, "--train", ("eval", "train"), ("data", "train"))
    val, val_source = _setting(config, val, "--val", ("eval", "val"))
    if not val:
        raise SslpipeError(f"{path}: the run names no labelled held-out split (eval.val): pass --val PATTERN")
    if not train:
        raise SslpipeError(f"{path}: the run names no train shards (data.train): pass --train PATTERN")
    pipeline, pipeline_source = _setting(config, pipeline, "--pipeline", ("eval", "pipeline"), default="eval")
    finetuning = bool(finetune_pipeline or semisup or augmented_probe_epochs)  # a typo is reported if given
    finetune_pipeline, finetune_source = _setting(config, finetune_pipeline, "--finetune-pipeline",
                                                  ("eval", "finetune_pipeline"), default="finetune")
    size, _ = _setting(config, size, "--size", ("eval", "size"))
    for shards, source in ((train, train_source), (val, val_source)):
        _check(resolve_shards, source, shards)
    for spec, source, used in ((pipeline, pipeline_source, True),
                               (finetune_pipeline, finetune_source, finetuning)):
        if used:
            _check(load_spec, source, spec, size)
    backbones = {"pretrained": pretrained}
    if random_baseline:
        torch.manual_seed(seed)
        backbones["random"] = build_backbone(model["backbone"], small_images=small_images,
                                             zero_init_residual=model.get("zero_init_residual", False))
    results = {}
    for name, backbone in backbones.items():
        backbone.to(device)
        features = {split: extract_features(backbone, shards, spec=pipeline, size=size, batch_size=batch_size,
                                            device=device, desc=f"{name}: {split} features")
                    for split, shards in (("train", train), ("val", val))}
        train_features, val_features = features["train"], features["val"]
        classes = int(max(train_features.labels.max(), val_features.labels.max())) + 1
        result = {"knn": knn_result(train_features, val_features, k=knn_k),
                  "linear": linear_probe(train_features.features, train_features.labels,
                                         val_features.features, val_features.labels, num_classes=classes,
                                         epochs=linear_epochs, seed=seed)}
        if augmented_probe_epochs:
            result["linear_augmented"] = augmented_linear_probe(
                backbone, train, val, num_classes=classes, epochs=augmented_probe_epochs, seed=seed,
                batch_size=min(batch_size, len(train_features.keys)), pipeline=finetune_pipeline,
                eval_pipeline=pipeline, size=size, device=device)
        for fraction in semisup:
            result[f"finetune_{fraction:g}"] = finetune_subset(
                backbone, train, train_features, val, fraction=fraction, num_classes=classes,
                epochs=finetune_epochs, seed=seed, pipeline=finetune_pipeline, eval_pipeline=pipeline,
                size=size, device=device)
        results[name] = result
    report = {"checkpoint": str(path), "step": checkpoint.get("step"), "train": train, "val": val,
              "pipeline": pipeline, "finetune_pipeline": finetune_pipeline, "size": size, "results": results}
    folder.write_eval(report)
    return report


def _device(device: str | None) -> str:
    """`device`, checked before any work; default: cuda when there is a GPU."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:  # not a device string at all
        kind = None
    if kind not in ("cpu", "cuda"):
        raise SslpipeError(f"--device {device}: not a device eval runs on: use cpu or cuda "
                           f"(cuda:N for one GPU)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise SslpipeError(f"--device {device}: no CUDA GPU is available here "
                               f"(torch.cuda.is_available() is False)")
        index, count = torch.device(device).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise SslpipeError(f"--device {device}: this machine has {count} CUDA GPU(s), "
                               f"cuda:0 to cuda:{count - 1}")
    return device


def _setting(config: dict, given, option: str, *keys: tuple[str, str], default=None) -> tuple:
    """The value of an input (`given`, else the run's config at the first of `keys`, else
    `default`) and how an error names it: the option, or the config's key."""
    if given:
        return given, f"{option} {given!r}"
    for section, key in keys:
        value = (config.get(section) or {}).get(key)
        if value:
            return value, f"{section}.{key} {value!r} (the run's config; {option} overrides it)"
    return default, f"{option} {default!r}"


def _check(load, source: str, *args) -> None:
    """Run `load` (resolve_shards, load_spec) on an input; its error names the input's `source`."""
    try:
        load(*args)
    except SslpipeError as e:
        raise SslpipeError(f"{source}: {e}") from None


def results_table(results: dict) -> str:
    """A markdown table: one row per protocol and metric, one column per backbone."""
    names = list(results)
    lines = ["| protocol | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for protocol, metrics in results[names[0]].items():
        for metric in ("top1", "top5"):
            if metric in metrics:
                label = f"{_protocol_name(protocol, metrics)} {metric}"
                cells = [f"{results[n][protocol][metric]:.1f}%" for n in names]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _protocol_name(protocol: str, metrics: dict) -> str:
    if protocol == "knn":
        return f"kNN (k={metrics['k']})"
    if protocol == "linear":
        return "linear probe"
    if protocol == "linear_augmented":
        return f"linear probe, augmented ({metrics['epochs']} epochs)"
    return f"fine-tune on {metrics['fraction']:.0%} ({metrics['labelled']} labels)"
