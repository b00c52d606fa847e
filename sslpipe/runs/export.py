"""Export a run's backbone for downstream use: safetensors with torchvision's ResNet keys."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch

from sslpipe.errors import SslpipeError, describe_os_error
from sslpipe.models import build_backbone
from sslpipe.train.checkpoint import load_checkpoint
from sslpipe.train.run_folder import RunFolder, save_backbone

PREFIX = "backbone."
EXPECTED = "expected an sslpipe training checkpoint (with config and model), such as RUN/checkpoints/last.pt"


def load_run_checkpoint(path: Path) -> dict:
    """A run's training checkpoint (`Checkpointer.save`'s dict, with the run's `config` and the
    method's `model` weights); a plain state dict or another program's file is a clear error."""
    checkpoint = load_checkpoint(path)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise SslpipeError(f"{path}: a plain state dict ({len(checkpoint)} tensors, e.g. "
                           f"{next(iter(checkpoint))!r}), not a run checkpoint: {EXPECTED}")
    missing = [key for key in ("config", "model") if not isinstance(checkpoint.get(key), dict)]
    if missing:
        keys = ", ".join(map(repr, list(checkpoint)[:6])) + (", ..." if len(checkpoint) > 6 else "")
        raise SslpipeError(f"{path}: not an sslpipe training checkpoint: it has no "
                           f"{' or '.join(map(repr, missing))} (its keys: {keys or 'none'}); {EXPECTED}")
    model = checkpoint["config"].get("model")
    if not isinstance(model, dict) or "backbone" not in model:
        raise SslpipeError(f"{path}: its config has no model.backbone; {EXPECTED}")
    return checkpoint


def backbone_state(checkpoint: dict, source: Path) -> dict:
    """The backbone's weights of a checkpoint, as torchvision names them (without `fc`), checked
    against our ResNet of the run's configuration."""
    state = {k[len(PREFIX):]: v for k, v in checkpoint["model"].items() if k.startswith(PREFIX)}
    if not state:
        raise SslpipeError(f"{source}: the checkpoint holds no backbone weights")
    model = checkpoint["config"]["model"]
    small_images = model.get("small_images", False)
    backbone = build_backbone(model["backbone"], small_images=small_images)
    # Compared here rather than by load_state_dict, whose error lists every key over many lines.
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in state if k in expected and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or reshaped:
        def shape(value):
            return list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__

        first = f" (first {reshaped[0]!r}: {shape(state[reshaped[0]])} here, " \
                f"{shape(expected[reshaped[0]])} expected)" if reshaped else ""
        raise SslpipeError(
            f"{source}: its backbone does not fit {model['backbone']} (small_images={small_images}) of its "
            f"config: {len(missing)} keys missing{f' (first {missing[0]!r})' if missing else ''}, "
            f"{len(unexpected)} unexpected{f' (first {unexpected[0]!r})' if unexpected else ''}, "
            f"{len(reshaped)} of another shape{first}")
    return {k: v.contiguous() for k, v in state.items()}


def export_run(target: str | Path, out: str | Path | None = None) -> Path:
    """Write `backbone.safetensors` and the run's `config.yaml` into `out` (default
    `<run>/export/`) from the run's last checkpoint (or the checkpoint file given). Nothing is
    written unless all is: on a failure the previous files in `out` stay as they were, and the
    folders this call created are removed."""
    path = RunFolder.find_checkpoint(target)
    run = RunFolder.of_checkpoint(path)
    out = Path(out) if out is not None else run.export
    created = _make_folder(out)  # before loading the checkpoint: a wrong -o fails at once
    config_copy = out / ".config.yaml.tmp"
    try:
        checkpoint = load_run_checkpoint(path)
        state = backbone_state(checkpoint, path)
        _check_finite(state, path)
        model = checkpoint["config"]["model"]
        keys = build_backbone(model["backbone"]).KEYS
        metadata = {"format": "pt", "architecture": model["backbone"], "keys": keys,
                    "small_images": str(model.get("small_images", False)),
                    "step": str(checkpoint.get("step")), "source": str(path)}
        if run.config.is_file():
            shutil.copyfile(run.config, config_copy)
        save_backbone(state, out / "backbone.safetensors", metadata)
        if run.config.is_file():
            os.replace(config_copy, out / "config.yaml")
    except BaseException as e:
        config_copy.unlink(missing_ok=True)
        _remove(created)
        if isinstance(e, OSError):  # save_backbone removed its partial file
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            advice = "; free space and rerun the same command" if full else ""
            raise SslpipeError(f"{describe_os_error(e, out)}: nothing was written (the partial file removed)"
                               f"{advice}") from None
        raise
    return out


def _make_folder(out: Path) -> list[Path]:
    """Create `out` if needed and check that files can be written into it; returns the folders
    created, the deepest first (to remove them if the export fails)."""
    if out.exists() and not out.is_dir():
        raise SslpipeError(f"{out}: a file, not a folder: the export writes backbone.safetensors and "
                           f"config.yaml into a folder (choose another -o)")
    missing = [p for p in [out, *out.parents] if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _remove(missing)
        raise SslpipeError(f"cannot create the output folder {out} in {missing[-1].parent}: "
                           f"{e.strerror}") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        _remove(missing)
        raise SslpipeError(f"{out}: cannot write into the output folder: {e.strerror}") from None
    return missing


def _remove(folders: list[Path]) -> None:
    """Remove these (empty) folders, the deepest first; a folder something else wrote into stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _check_finite(state: dict, source: Path) -> None:
    """Refuse NaN or inf weights: a diverged run's backbone, useless downstream."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SslpipeError(f"{source}: {len(bad)} of the backbone's {len(state)} tensors hold NaN or inf "
                           f"(the first: {bad[0]!r}): the run diverged; export an earlier checkpoint "
                           f"(a checkpoints/step-*.pt) instead. Nothing was written")

