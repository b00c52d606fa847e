"""Checkpoint policy: which state a run saves, how it is written, and how a resume is checked.

One mapping names the run's stateful parts, each an object with `state_dict()` and
`load_state_dict()` (torchdata's `Stateful` protocol), and says which are the same on every
process (saved once, by the main process) and which are each process's own (gathered, saved per
rank); a new stateful part is one entry:

    Checkpointer(accelerator, folder, keep,
                 shared={"model": method, "optimizer": optimizer, "scaler": ..., "progress": progress},
                 per_rank={"loader": loader, "method": MethodRankState(method), "rng": RNGState()})

Files, in the run's `checkpoints/`:

    step-00001200.pt   every `train.checkpoint_every` steps and at each epoch's end
    last.pt            the newest, a hard link (no second copy on disk)

A save writes a temporary file, syncs it and renames it, so a crash mid-save leaves the previous
checkpoints intact; older step files are pruned only after the new one is in place. The state
holds only tensors and plain Python values, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol

import torch

from sslpipe.errors import SslpipeError, describe_os_error

LAST = "last.pt"
VERSION = 2
# Settings a resumed run may change; any other difference would make it a different run.
RESUMABLE_CHANGES = {"train": {"max_steps", "checkpoint_every", "keep_checkpoints", "log_every",
                               "nonfinite_loss", "out", "run"},
                     "eval": {"val", "train", "pipeline", "size", "finetune_pipeline", "every_epochs",
                              "knn_k", "knn_temperature", "batch_size"}}


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Progress:
    """The global step and the count of skipped steps (non-finite losses)."""

    def __init__(self):
        self.step, self.skipped = 0, 0

    def state_dict(self) -> dict:
        return {"step": self.step, "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.skipped = state["step"], state["skipped"]


class RNGState:
    """torch's global generators of this process (CPU, and CUDA's when there is one)."""

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class MethodRankState:
    """A method's per-process state (`Method.rank_state_dict`) as a Stateful."""

    def __init__(self, method):
        self.method = method

    def state_dict(self) -> dict:
        return self.method.rank_state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.method.load_rank_state_dict(state)


class Checkpointer:
    """Saves and restores the parts of a run (see the module's docstring)."""

    def __init__(self, accelerator, folder: Path, keep: int, *, shared: dict[str, Stateful | None],
                 per_rank: dict[str, Stateful]):
        self.accelerator, self.folder, self.keep = accelerator, Path(folder), keep
        self.shared, self.per_rank = shared, per_rank

    def save(self, step: int, config: dict) -> None:
        """Every process contributes its per-rank parts; the main one writes the file."""
        from accelerate.utils import gather_object

        ranks = gather_object([{name: part.state_dict() for name, part in self.per_rank.items()}])
        if self.accelerator.is_main_process:
            state = {"version": VERSION, "step": step, "config": config, "ranks": ranks,
                     **{name: part.state_dict() if part is not None else None
                        for name, part in self.shared.items()}}
            save_checkpoint(state, self.folder, step, self.keep)
        self.accelerator.wait_for_everyone()

    def restore(self, path: Path, config: dict) -> dict:
        """Load `path` into this process's parts, after checking it is the same run; returns it."""
        checkpoint = load_checkpoint(path)
        if checkpoint.get("version") != VERSION:
            raise SslpipeError(f"{path}: checkpoint version {checkpoint.get('version')}, expected {VERSION} "
                               f"(written by another sslpipe version)")
        check_same_run(path, checkpoint["config"], config)
        ranks = checkpoint["ranks"]
        if len(ranks) != self.accelerator.num_processes:
            raise SslpipeError(f"{path}: saved by {len(ranks)} processes, resumed with "
                               f"{self.accelerator.num_processes}: launch the same number of processes")
        for name, part in self.shared.items():
            if part is not None and checkpoint.get(name) is not None:
                part.load_state_dict(checkpoint[name])
        mine = ranks[self.accelerator.process_index]
        for name, part in self.per_rank.items():
            part.load_state_dict(mine[name])
        return checkpoint


def check_same_run(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume with a setting that makes it another run, naming the first one."""
    for section, values in current.items():
        for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
            if key in RESUMABLE_CHANGES.get(section, ()):
                continue
            before = saved.get(section, {}).get(key) if key else saved.get(section)
            if _plain(before) != _plain(value):
                changeable = ", train.".join(sorted(RESUMABLE_CHANGES["train"]))
                raise SslpipeError(f"cannot resume from {path}: {section}.{key} was {before!r}, "
                                   f"now {value!r} (only the eval section and train.{changeable} may change)")


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def save_checkpoint(state: dict, folder: Path, step: int, keep: int) -> Path:
    """Write `state` as `folder/step-<step>.pt`, point `last.pt` at it, keep the `keep` newest."""
    path = folder / f"step-{step:08d}.pt"
    temporary = folder / f".{path.name}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:  # torch reports a failed write as its own error, without the errno
                if writer.error is None:
                    raise
                raise writer.error from None
            f.flush()
            os.fsync(f.fileno())
    except BaseException as e:  # a full disk, Ctrl-C: the previous checkpoints stay as they were
        temporary.unlink(missing_ok=True)
        if isinstance(e, OSError):
            previous = folder / LAST
            kept = (f"the previous checkpoint {previous} is intact" if previous.is_file()
                    else "no earlier checkpoint was written")
            raise SslpipeError(f"{describe_os_error(e, folder)} while saving the checkpoint of step {step}: "
                               f"nothing of it was kept, {kept}; free space and continue with --resume"
                               ) from None
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


class _Writer:
    """A file's `write`, keeping the OSError that torch.save turns into a RuntimeError without errno."""

    def __init__(self, file):
        self.file, self.error = file, None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def load_checkpoint(path: Path) -> dict:
    """The dict that `torch.save` wrote to `path`, read with `weights_only=True` (tensors and plain
    values only: unpickling anything else could run code); a one-line SslpipeError otherwise."""
    # The first bytes of torch.save's files: a zip archive, or the legacy format's pickled magic number.
    zip_magic, legacy_magic = b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."
    cannot = f"{path}: cannot load the checkpoint"
    try:
        with open(path, "rb") as f:
            head = f.read(len(legacy_magic))
    except OSError as e:
        raise SslpipeError(f"{cannot}: {e.strerror}") from None
    if not head:
        raise SslpipeError(f"{cannot}: empty file (an interrupted copy or save?)")
    if not head.startswith(zip_magic) and head != legacy_magic:
        raise SslpipeError(f"{cannot}: not a torch checkpoint (torch.save writes a zip archive; this file "
                           f"starts with {head[:8]!r})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        # torch's text advises weights_only=False, never right here: it would unpickle arbitrary code.
        if "Weights only load failed" in str(e):
            found = str(e).partition("GLOBAL ")[2].split(" ")[0]  # the first class it refused
            raise SslpipeError(f"{cannot}: refused for safety: it holds objects other than tensors and plain "
                               f"values{f' ({found})' if found else ''}; sslpipe checkpoints never do"
                               ) from None
        detail = str(e).strip().split("\n")[0].split(". ")[0].rstrip(".")  # torch's first sentence
        raise SslpipeError(f"{cannot}: truncated or corrupt (an interrupted copy or save?)"
                           + (f": {detail}" if detail else "")) from None
    if not isinstance(checkpoint, dict):
        raise SslpipeError(f"{cannot}: it holds a {type(checkpoint).__name__}, not a dict")
    return checkpoint
