"""Checkpoints: one file per save, written atomically, loaded without unpickling code.

    checkpoints/step-00001200.pt   every `train.checkpoint_every` steps and at each epoch's end
    checkpoints/last.pt            the newest, a hard link (no second copy on disk)

A save writes a temporary file, syncs it and renames it, so a crash mid-save leaves the previous
checkpoints intact; older step files are pruned only after the new one is in place. The state
holds only tensors and plain Python values, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from sslpipe.errors import SslpipeError

LAST = "last.pt"


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    """Write `state` as `folder/step-<step>.pt`, point `last.pt` at it, keep the `keep` newest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    temporary = folder / f".{path.name}.tmp"
    try:
        with open(temporary, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:  # a full disk, Ctrl-C: the previous checkpoints stay as they were
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    last = folder / f".{LAST}.tmp"
    last.unlink(missing_ok=True)
    try:
        os.link(path, last)
    except OSError:  # a file system without hard links
        shutil.copyfile(path, last)
    os.replace(last, folder / LAST)
    for old in sorted(folder.glob("step-*.pt"))[:-keep or None]:
        old.unlink()
    return path


def find_checkpoint(where: str | Path) -> Path:
    """A checkpoint file, or the `last.pt` of a run folder or of its `checkpoints/` folder."""
    where = Path(where)
    for candidate in (where, where / LAST, where / "checkpoints" / LAST):
        if candidate.is_file():
            return candidate
    raise SslpipeError(f"{where}: no checkpoint there (expected a .pt file, or a run folder with "
                       f"checkpoints/{LAST})")


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a checkpoint, or holding objects weights_only refuses
        raise SslpipeError(f"{path}: cannot load the checkpoint: {e}") from None
