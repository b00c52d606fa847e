"""Where a part's state lives under several processes, written once (`Part`).

- replicated (`per_rank=False`): every process applies every process's updates (all-gathered), so
  all hold the same state. Its buffers are persistent: saved once, in the model's state dict.
- per rank (`per_rank=True`): each process keeps its own (SwAV's queue of its own embeddings). Its
  buffers are non-persistent (moved by `.to()`, absent from the model's state dict) and saved for
  each process through `rank_state_dict()`.

DDP broadcasts rank 0's buffers before every forward by default: that would overwrite per-rank
state, and send replicated state (a 650 MB memory bank) every step for nothing, so the loop tells
DDP to leave every part's buffers alone (`Method.unsynced_buffers`).
"""

from __future__ import annotations

import torch
from torch import nn


class Part(nn.Module):
    """Base of the stateful parts: `add_state` registers a state tensor where it belongs."""

    def __init__(self, per_rank: bool):
        super().__init__()
        self.per_rank = per_rank

    def add_state(self, name: str, tensor: torch.Tensor) -> None:
        self.register_buffer(name, tensor, persistent=not self.per_rank)

    def rank_state_dict(self) -> dict:
        """The per-rank state (empty for a replicated part)."""
        if not self.per_rank:
            return {}
        return {name: buffer.detach().cpu().clone() for name, buffer in self.named_buffers(recurse=False)}

    def load_rank_state_dict(self, state: dict) -> None:
        if self.per_rank:
            missing = sorted({name for name, _ in self.named_buffers(recurse=False)} - set(state))
            if missing:
                raise ValueError(f"the saved per-process state lacks {', '.join(missing)}")
            for name, buffer in self.named_buffers(recurse=False):
                saved = state[name]
                if saved.shape != buffer.shape:
                    raise ValueError(f"the saved {name} has shape {tuple(saved.shape)}, this run's "
                                     f"{tuple(buffer.shape)} (another number of processes, or other sizes?)")
                buffer.copy_(saved)
        self.state_loaded()

    def _load_from_state_dict(self, *args, **kwargs):  # a replicated part, through model.load_state_dict
        super()._load_from_state_dict(*args, **kwargs)
        self.state_loaded()

    def state_loaded(self) -> None:
        """Called after the state was loaded (a part refreshes what it mirrors on the host)."""
