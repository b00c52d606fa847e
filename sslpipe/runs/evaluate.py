"""`sslpipe eval`: the evaluation protocols on a run's backbone and, for comparison, on a random
one; the table of their results."""

from __future__ import annotations

from pathlib import Path

import torch

from sslpipe.errors import SslpipeError
from sslpipe.eval.features import extract_features
from sslpipe.eval.finetune import augmented_linear_probe, finetune_subset
from sslpipe.eval.knn import knn_result
from sslpipe.eval.linear import linear_probe
from sslpipe.models import build_backbone
from sslpipe.runs.export import backbone_state
from sslpipe.train.checkpoint import load_checkpoint
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
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    path = RunFolder.find_checkpoint(run)
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    online = config.get("eval", {})
    train = train or online.get("train") or config["data"]["train"]
    val = val or online.get("val")
    if not val:
        raise SslpipeError(f"{path}: the run names no labelled held-out split (eval.val): pass --val PATTERN")
    pipeline = pipeline or online.get("pipeline") or "eval"
    finetune_pipeline = finetune_pipeline or online.get("finetune_pipeline") or "finetune"
    size = size or online.get("size")
    model = config["model"]
    pretrained = build_backbone(model["backbone"], small_images=model["small_images"])
    pretrained.load_state_dict(backbone_state(checkpoint, path))
    backbones = {"pretrained": pretrained}
    if random_baseline:
        torch.manual_seed(seed)
        backbones["random"] = build_backbone(model["backbone"], small_images=model["small_images"],
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
    report = {"checkpoint": str(path), "step": checkpoint["step"], "train": train, "val": val,
              "pipeline": pipeline, "finetune_pipeline": finetune_pipeline, "size": size, "results": results}
    RunFolder.of_checkpoint(path).write_eval(report)
    return report


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
