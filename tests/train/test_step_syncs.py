"""Host synchronisations per training step, counted on the CPU (`sslpipe.counting`): the one agreed
sync is the non-finite check every process must agree on; the rest of a step (schedule, forward,
backward, update, the metrics' window) leaves the device's queue alone. And the start-up pieces of
the loop that keep it so: DDP broadcasts no buffers; the memory warning is printed once."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from run_helpers import RECIPES, SMALL, config

from sslpipe.counting import DispatchCounter
from sslpipe.losses import nt_xent
from sslpipe.methods import Step, StepOutput
from sslpipe.pipeline.batch import Batch
from sslpipe.train import loop
from sslpipe.train.checkpoint import Progress
from sslpipe.train.config import load_config
from sslpipe.train.window import Window

# 16 px views keep a ResNet-18 (small-images stem) step fast on two cores. SwAV gets two 8 px local
# crops besides its two global ones; with test_training's settings its prototypes' gradient is
# dropped in steps 0 and 1, and its queue, full after 2 steps, is read in the third.
SIZES = {"simclr": [16, 16], "mocov2": [16, 16], "swav": [16, 16, 8, 8], "simsiam": [16, 16]}


def small_state(method, tmp_path):
    """The loop's state for `method` as `train` builds it, without a loader or run folder."""
    recipe = load_config(RECIPES / f"{method}_small.yaml",
                         ["data.batch_size=8", "model.small_images=true", f"train.out={tmp_path}",
                          "train.epochs=1", *SMALL[method]])
    acc = loop._accelerator(recipe)
    torch.manual_seed(0)
    built = loop.build_method(recipe).to(acc.device)
    schedules = loop.build_schedules(recipe, built, 5, 5)
    optimizer = loop.build_optimizer(recipe, built, schedules.peak_lr)
    model, optimizer = acc.prepare(built, optimizer)
    return loop.TrainState(acc, model, built, optimizer, None, schedules, recipe, None, None, None,
                           Progress(), steps_per_epoch=5, window=Window())


@pytest.mark.parametrize("method", ["simclr", "mocov2", "swav", "simsiam"])
def test_a_training_step_syncs_the_host_once_in_the_nonfinite_check(method, tmp_path, monkeypatch):
    state = small_state(method, tmp_path)
    in_check = []
    agree = loop._agree

    def counted_check(acc, loss, stop_requested):  # the syncs inside the agreed check
        before = counter.sync_count
        flags = agree(acc, loss, stop_requested)
        in_check.append(counter.sync_count - before)
        return flags

    monkeypatch.setattr(loop, "_agree", counted_check)
    generator = torch.Generator().manual_seed(0)
    names = ["global", "global"] + ["local"] * (len(SIZES[method]) - 2)
    window = Window()
    for index in range(3):
        batch = Batch.from_views([torch.randn(8, 3, s, s, generator=generator) for s in SIZES[method]],
                                 names=names)
        with DispatchCounter(roots=[state.model, state.optimizer, *batch.views, batch.labels, batch.index]) \
                as counter:
            out, skipped, stop = loop.train_step(state, batch, index, epoch=0)
            window.add(out, 0.0, 1.0, batch.size)
        assert not skipped and not stop
        assert counter.syncs == Counter(tolist=1), (index, dict(counter.syncs))
        assert in_check[-1] == 1
    assert math.isfinite(window.means(state.accelerator)["loss"])


def test_moco_s_shuffle_is_the_seeded_permutation_sent_without_a_blocking_copy(tmp_path):
    state = small_state("mocov2", tmp_path)
    method, n = state.method, 8
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)  # row i holds i: the output is the order
    step = Step(index=7, seed=3)
    # On the CPU a `.to(device)` of a host tensor is counted as a copy whatever the device (the
    # counter cannot tell cpu from cpu): a blocking one shows here, as it did before the fix.
    with DispatchCounter(roots=[x]) as counter:
        shuffled, restore = method._shuffle(x, step)
        back = restore(shuffled)
    assert counter.sync_count == 0, dict(counter.syncs)
    expected = torch.randperm(n, generator=torch.Generator().manual_seed(3 * 1_000_003 + 7))  # one process
    assert torch.equal(shuffled.flatten().long(), expected)
    assert torch.equal(back, x)


def test_nt_xent_syncs_nothing_and_keeps_its_values():
    generator = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(6, 5, generator=generator, dtype=torch.float64) for _ in range(2))
    with DispatchCounter(roots=[z1, z2]) as counter:
        loss, candidates = nt_xent(z1, z2, 0.5)
    assert counter.sync_count == 0, dict(counter.syncs)
    h = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = (h @ h.t() / 0.5).masked_fill(torch.eye(12, dtype=torch.bool), float("-inf"))
    partner = torch.cat([torch.arange(6) + 6, torch.arange(6)])
    by_hand = F.cross_entropy(logits[:6], partner[:6]) + F.cross_entropy(logits[6:], partner[6:])
    torch.testing.assert_close(loss, by_hand)
    assert candidates == 12


class Sums:
    """An Accelerator's `reduce` in one process."""

    @staticmethod
    def reduce(tensor, reduction):
        return tensor


def test_the_window_sums_device_tensors_on_the_device_and_numbers_on_the_host():
    window, loss = Window(), torch.zeros(())
    for i in range(4):
        out = StepOutput(loss + i, {"std": loss + 2 * i, "candidates": 16.0, "ref": 0.25 * i})
        with DispatchCounter(roots=[loss]) as counter:
            window.add(out, 0.5, 1.0, 8)
        assert counter.sync_count == 0, dict(counter.syncs)
    window.add(None, 0.0, 1.0, 8)  # a skipped step: timing only
    assert set(window.sums) == {"loss", "std"} and set(window.host_sums) == {"candidates", "ref"}
    means = window.means(Sums())
    assert means == {"candidates": 16.0, "loss": 1.5, "ref": 0.375, "std": 3.0, "images_per_s": 8.0,
                     "data_wait": 0.4}
    assert list(means)[:4] == ["candidates", "loss", "ref", "std"]  # sorted, as before


def test_ddp_broadcasts_no_buffers(tmp_path):
    accelerator = loop._accelerator(config("mocov2", "unused", tmp_path))
    assert accelerator.ddp_handler.broadcast_buffers is False
    assert accelerator.ddp_handler.to_kwargs() == {"broadcast_buffers": False}  # what DDP is given


def test_the_memory_warning_is_printed_once_at_start_up(photo_shards, tmp_path, monkeypatch, capsys):
    calls = []

    def warning(config, spec, processes, device, mixed_precision):
        calls.append((spec.name, processes, str(device), mixed_precision))
        return "sslpipe: warning: the backbone's saved activations alone need about 99 GiB"

    monkeypatch.setattr(loop, "recipe_memory_warning", warning)
    loop.train(config("simsiam", photo_shards, tmp_path, "train.max_steps=1", "eval.every_epochs=0"))
    assert calls == [("small_mocov2", 1, "cpu", "no")]
    assert capsys.readouterr().err.count("need about 99 GiB") == 1
