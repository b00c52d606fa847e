"""Run under `accelerate launch`: train as `sslpipe.train` does, then write what this process saw.

    accelerate launch --multi_gpu --num_processes 2 tests/train/rank_probe.py OUT RECIPE [key=value ...]

Writes OUT/rank<r>.pt: the keys of every batch this process read, its method's parameters and
buffers after training, and the metrics of its last step.
"""

import sys
from pathlib import Path

import torch

from sslpipe.pipeline.loader import ViewLoader
from sslpipe.train import loop
from sslpipe.train.config import load_config

keys, states = [], []
iterate, train_one_epoch = ViewLoader.__iter__, loop.train_one_epoch


def recording_iter(self):
    for batch in iterate(self):
        keys.append(list(batch.keys))
        yield batch


def recording_epoch(state, last_step):
    states.append(state)
    return train_one_epoch(state, last_step)


ViewLoader.__iter__ = recording_iter
loop.train_one_epoch = recording_epoch

out, recipe, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
loop.train(load_config(recipe, overrides))
state = states[-1]
method = state.method
torch.save({"keys": keys, "world_size": state.accelerator.num_processes,
            "parameters": {k: v.detach().clone() for k, v in method.named_parameters()},
            "buffers": {k: v.clone() for k, v in method.named_buffers()}},
           out / f"rank{state.accelerator.process_index}.pt")
