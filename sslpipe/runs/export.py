"""Export a run's backbone for downstream use: safetensors with torchvision's ResNet keys."""

from __future__ import annotations

import shutil
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.models import build_backbone
from sslpipe.train.checkpoint import load_checkpoint
from sslpipe.train.run_folder import RunFolder, save_backbone

PREFIX = "backbone."


def backbone_state(checkpoint: dict, source: Path) -> dict:
    """The backbone's weights of a checkpoint, as torchvision names them (without `fc`), checked
    by loading them into our ResNet of the run's configuration."""
    state = {k[len(PREFIX):]: v for k, v in checkpoint["model"].items() if k.startswith(PREFIX)}
    if not state:
        raise SslpipeError(f"{source}: the checkpoint holds no backbone weights")
    model = checkpoint["config"]["model"]
    backbone = build_backbone(model["backbone"], small_images=model["small_images"])
    try:
        backbone.load_state_dict(state)
    except RuntimeError as e:
        raise SslpipeError(f"{source}: its backbone does not fit {model['backbone']}: {e}") from None
    return {k: v.contiguous() for k, v in state.items()}


def export_run(target: str | Path, out: str | Path | None = None) -> Path:
    """Write `backbone.safetensors` and the run's `config.yaml` into `out` (default
    `<run>/export/`) from the run's last checkpoint (or the checkpoint file given)."""
    path = RunFolder.find_checkpoint(target)
    checkpoint = load_checkpoint(path)
    run = RunFolder.of_checkpoint(path)
    out = Path(out) if out is not None else run.export
    model = checkpoint["config"]["model"]
    metadata = {"format": "pt", "architecture": model["backbone"], "small_images": str(model["small_images"]),
                "step": str(checkpoint["step"]), "source": str(path)}
    save_backbone(backbone_state(checkpoint, path), out / "backbone.safetensors", metadata)
    if run.config.is_file():
        shutil.copyfile(run.config, out / "config.yaml")
    return out
