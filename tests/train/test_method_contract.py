"""The method contract in the loop: declared views checked before the first step, named schedule
values passed in and logged, the per-rank generator, the hooks and their order, exact resume of a
method's own randomness."""

import json

import pytest
import torch
from run_helpers import assert_identical, config, final_state

from sslpipe.errors import SslpipeError
from sslpipe.eval.features import extract_features
from sslpipe.methods import METHODS, SimCLR, Step
from sslpipe.train.loop import train


@pytest.mark.parametrize(
    "method, pipeline, overrides, message",
    [
        # SimCLR on one view would pair different images as positives.
        ("simclr", "finetune", [], r"method simclr needs exactly 2 views, not 1 \(the two views of an image"),
        # ... and on eight it would decode and augment six for nothing.
        ("simclr", "swav_multicrop", [], r"exactly 2 views, not 8 and views of one size, not \[96, 224\] px"),
        ("mocov2", "finetune", [], r"method mocov2 needs exactly 2 views, not 1"),
        ("simsiam", "finetune", [], r"method simsiam needs exactly 2 views, not 1"),
        # Codes for 3 global crops, but the spec has 2: a local crop would be taken for a global one.
        (
            "swav",
            "small_swav_multicrop",
            ["method.global_crops=3"],
            r"method swav needs at least 3 views named 'global', not 2",
        ),
        ("swav", "small_simclr", ["method.global_views=big"], r"at least 2 views named 'big', not none"),
    ],
)
def test_a_spec_that_does_not_fit_the_method_is_refused_before_any_step(
    photo_shards, tmp_path, method, pipeline, overrides, message
):
    with pytest.raises(SslpipeError, match=message) as error:
        train(config(method, photo_shards, tmp_path, f"data.pipeline={pipeline}", *overrides))
    assert "data.pipeline is " in str(error.value) and f"{pipeline}.yaml" in str(error.value)
    assert not (tmp_path / f"{method}_small").exists()  # refused before writing anything


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_schedule_values_are_passed_in_and_logged(photo_shards, tmp_path):
    run_dir = train(
        config(
            "mocov2",
            photo_shards,
            tmp_path,
            "train.max_steps=4",
            "method.momentum_schedule=cosine",
            "optim.weight_decay=0.1",
            "optim.final_weight_decay=0.01",
        )
    )
    logged = rows(run_dir)
    assert all({"lr", "weight_decay", "ema_momentum"} <= set(r) for r in logged)
    momentum = [r["ema_momentum"] for r in logged]
    assert momentum[0] == pytest.approx(0.99) and momentum == sorted(momentum)  # cosine towards 1
    decay = [r["weight_decay"] for r in logged]
    assert decay[0] == pytest.approx(0.1) and decay == sorted(decay, reverse=True) and decay[-1] > 0.01
    # The optimizer's groups got this step's weight decay (all of MoCo's groups take it).
    groups = final_state(run_dir)["optimizer"]["param_groups"]
    assert all(g["weight_decay"] == pytest.approx(decay[-1]) for g in groups)


def test_the_per_rank_generator_depends_on_seed_step_and_rank():
    def draw(**where):
        return torch.rand(4, generator=Step(**where).generator)

    assert torch.equal(draw(seed=1, index=5, rank=0), draw(seed=1, index=5, rank=0))
    others = [draw(seed=2, index=5, rank=0), draw(seed=1, index=6, rank=0), draw(seed=1, index=5, rank=1)]
    assert all(not torch.equal(draw(seed=1, index=5, rank=0), other) for other in others)
    with pytest.raises(KeyError, match="no schedule value 'tau'"):
        Step(values={"lr": 0.1})["tau"]


class Recorder(SimCLR):
    """SimCLR that records the loop's calls, extracts features at each epoch's start and draws
    its own noise from the step's generator."""

    calls: list = []

    def forward(self, batch, step):
        out = super().forward(batch, step)
        out.metrics["draw"] = torch.rand((), generator=step.generator)
        self.calls.append(("forward", step.index))
        return out

    def before_optimizer_step(self, step):
        self.calls.append(("before", step.index))

    def after_optimizer_step(self, step):
        self.calls.append(("after", step.index))

    def on_epoch_start(self, epoch, extract):
        features = extract(self.backbone)
        self.calls.append(("epoch", epoch, tuple(features.shape)))


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(METHODS, "recorder", Recorder)
    Recorder.calls = []
    return Recorder.calls


def recorder_config(shards, out, *overrides):
    return config("simclr", shards, out, "method.name=recorder", "train.run=recorder", *overrides)


def test_hooks_run_in_order_and_the_epoch_hook_sees_every_training_image(photo_shards, tmp_path, recorder):
    train(recorder_config(photo_shards, tmp_path, "train.max_steps=6"))
    train_images = len(extract_features(torch.nn.Identity(), photo_shards, spec="eval", size=8).index)
    assert recorder[0] == ("epoch", 0, (train_images, 512))
    steps = [c for c in recorder if c[0] != "epoch"]
    assert steps == [(name, i) for i in range(6) for name in ("forward", "before", "after")]
    assert recorder.index(("epoch", 1, (train_images, 512))) == 1 + 3 * 5  # after epoch 0's 5 steps


def test_features_come_in_global_index_order(photo_shards):
    features = extract_features(torch.nn.Flatten(), photo_shards, spec="eval", size=4)
    assert torch.equal(features.index, torch.arange(len(features.index)))


def test_a_method_s_own_draws_resume_exactly_and_the_epoch_hook_is_not_rerun_mid_epoch(
    photo_shards, tmp_path, recorder
):
    whole = train(recorder_config(photo_shards, tmp_path / "whole", "train.max_steps=7"))
    train(recorder_config(photo_shards, tmp_path / "cut", "train.max_steps=3"))
    recorder.clear()
    resumed = train(recorder_config(photo_shards, tmp_path / "cut", "train.max_steps=7"), resume="auto")
    # Resumed at step 3 of epoch 0: no epoch-0 hook (its result would be in the method's state),
    # then epoch 1's at step 5.
    assert [c[:2] for c in recorder if c[0] == "epoch"] == [("epoch", 1)]
    drop_timing = lambda row: {k: v for k, v in row.items() if k not in ("images_per_s", "data_wait")}  # noqa: E731
    assert [drop_timing(r) for r in rows(whole)] == [drop_timing(r) for r in rows(resumed)]
    assert len({r["draw"] for r in rows(whole)}) == 7  # a new draw every step
    for key in ("model", "optimizer", "ranks"):
        assert_identical(final_state(whole)[key], final_state(resumed)[key], key)
