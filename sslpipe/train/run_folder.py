"""A run's folder, `<train.out>/<train.run>/`, and everything written into it.

    config.yaml            the resolved config (git SHA, processes, device, peak lr, fingerprints)
    metrics.jsonl          one JSON row per log step (and the online kNN), also to TensorBoard
    tensorboard/           when TensorBoard is installed
    checkpoints/           step-*.pt and last.pt (`sslpipe.train.checkpoint`)
    backbone.safetensors   at the end of training (torchvision's ResNet keys)
    <name>.npy             what the method keeps beside the run (`Method.artifacts`: colorization's prior)
    eval.json              `sslpipe eval`
    export/                `sslpipe export`

The training loop, evaluation and export all find these paths here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import yaml

from sslpipe.errors import SslpipeError, describe_os_error
from sslpipe.train.checkpoint import LAST


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> RunFolder:
        """The run a checkpoint belongs to (its folder's parent, for `<run>/checkpoints/*.pt`)."""
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent)

    @staticmethod
    def find_checkpoint(where: str | Path) -> Path:
        """A checkpoint file, or the `last.pt` of a run folder or of its `checkpoints/` folder."""
        where = Path(where)
        for candidate in (where, where / LAST, where / "checkpoints" / LAST):
            if candidate.is_file():
                return candidate
        # A kill between a save's rename and its `last.pt` link leaves the newest as a step file only.
        steps = sorted(where.glob("step-*.pt")) or sorted(where.glob("checkpoints/step-*.pt"))
        if steps:
            return steps[-1]
        raise SslpipeError(f"{where}: no checkpoint there (expected a .pt file, or a run folder with "
                           f"checkpoints/{LAST})")

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def backbone(self) -> Path:
        return self.path / "backbone.safetensors"

    @property
    def eval_report(self) -> Path:
        return self.path / "eval.json"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def has_checkpoint(self) -> bool:
        """Whether `checkpoints/` holds a complete checkpoint (a save killed midway leaves only a
        `.tmp` file, and a run that can start afresh)."""
        return (self.checkpoints / LAST).is_file() or any(self.checkpoints.glob("step-*.pt"))

    def remove_partial_files(self) -> list[Path]:
        """Delete the temporary files of saves that were killed midway (a checkpoint's, the
        backbone's, each hundreds of MB); returns them."""
        partial = sorted(self.checkpoints.glob(".*.tmp")) + sorted(self.path.glob(".*.tmp"))
        for path in partial:
            path.unlink(missing_ok=True)
        return partial

    def keep_metrics_until(self, step: int) -> int:
        """Drop the rows logged after global step `step` (by a run killed after its last
        checkpoint, whose resume logs them again); every row when `step` is 0. Returns how many."""
        rows = self.read_metrics()
        kept = [row for row in rows if row["step"] <= step]
        if len(kept) < len(rows):
            temporary = self.metrics.with_name(f".{self.metrics.name}.tmp")
            temporary.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(temporary, self.metrics)
        return len(rows) - len(kept)

    def write_config(self, resolved: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config.write_text(yaml.safe_dump(json.loads(json.dumps(resolved)), sort_keys=False))

    def write_artifact(self, name: str, array: np.ndarray) -> Path:
        """`<name>.npy`, through a temporary file renamed on success."""
        path = self.path / f"{name}.npy"
        temporary = path.with_name(f".{path.name}.tmp")
        try:
            with open(temporary, "wb") as f:
                np.save(f, array)
            os.replace(temporary, path)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            raise SslpipeError(f"{describe_os_error(e, path)}: the method's {name} was not written; free "
                               f"space and resume (it is in the checkpoints)") from None
        return path

    def write_eval(self, report: dict) -> None:
        """`eval.json`, through a temporary file renamed on success (a previous report stays
        whole on a full disk)."""
        temporary = self.eval_report.with_name(f".{self.eval_report.name}.tmp")
        try:
            temporary.write_text(json.dumps(report, indent=2) + "\n")
            os.replace(temporary, self.eval_report)
        except OSError as e:
            temporary.unlink(missing_ok=True)
            raise SslpipeError(f"{describe_os_error(e, self.eval_report)}: the evaluation's results were "
                               f"not kept; free space and run the same command again") from None

    def read_metrics(self) -> list[dict]:
        """The rows of `metrics.jsonl`; a last line cut short by a kill is left out."""
        if not self.metrics.is_file():
            return []
        rows = []
        for number, line in enumerate(self.metrics.read_text().splitlines(keepends=True), 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise SslpipeError(f"{self.metrics}: line {number} is not JSON") from None
        return rows


class MetricsWriter:
    """Appends rows to `metrics.jsonl` and, when the accelerator logs to TensorBoard, to it too; on
    the main process only (the rows are already reduced over processes)."""

    def __init__(self, run: RunFolder, accelerator=None):
        self.run, self.accelerator = run, accelerator

    def write(self, row: dict) -> None:
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return
        try:
            with open(self.run.metrics, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise SslpipeError(f"{describe_os_error(e, self.run.metrics)}: the checkpoints are intact; free "
                               f"space and continue with --resume") from None
        if self.accelerator is not None and self.accelerator.log_with:
            self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])


def save_backbone(backbone_state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> Path:
    """Write a backbone's weights (torchvision's keys) as safetensors, through a temporary file
    beside `path` renamed on success: a failure (a full disk) leaves no partial file and any
    previous `path` as it was."""
    from safetensors.torch import save

    # Serialised here and written by Python, so a full disk is an OSError with its errno (ENOSPC).
    data = save({k: v.contiguous() for k, v in backbone_state.items()}, metadata=metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
