"""The training loop in one process on the fixture photos: run folder, exact resume, non-finite
losses, checkpoint crashes."""

import json

import numpy as np
import pytest
import torch
import yaml
from run_helpers import RECIPES, SMALL, STEPS_PER_EPOCH, assert_identical, config, final_state
from safetensors.torch import load_file

from sslpipe.cli import main
from sslpipe.errors import SslpipeError
from sslpipe.methods import SimCLR
from sslpipe.models import resnet18
from sslpipe.train import checkpoint as checkpoint_module
from sslpipe.train.checkpoint import load_checkpoint
from sslpipe.train.loop import train


def test_a_run_writes_its_folder(photo_shards, tmp_path):
    run_dir = train(config("simclr", photo_shards, tmp_path))
    assert run_dir == tmp_path / "simclr_small"
    resolved = (run_dir / "config.yaml").read_text()
    assert "git:" in resolved and "peak_lr:" in resolved and f"steps_per_epoch: {STEPS_PER_EPOCH}" in resolved
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for key in ("loss", "lr", "momentum", "embedding_std", "embedding_std_ref", "images_per_s", "data_wait"):
        assert all(key in r for r in rows), key
    assert rows[0]["lr"] == 0.0 and rows[3]["lr"] > 0  # one warmup epoch from 0
    assert rows[0]["candidates"] == 16  # 2N views in one process
    assert 0 <= rows[-1]["data_wait"] <= 1
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["last.pt", "step-00000005.pt", "step-00000010.pt"]  # epoch ends
    backbone = load_file(run_dir / "backbone.safetensors")
    reference = resnet18()  # torchvision's keys, without the classifier
    assert backbone.keys() == reference.state_dict().keys()
    reference.load_state_dict(backbone)
    assert torch.equal(backbone["conv1.weight"], final_state(run_dir)["model"]["backbone.conv1.weight"])


@pytest.mark.parametrize("method", sorted(SMALL))  # every method with a small recipe
def test_n_steps_then_resume_then_n_steps_equals_2n_steps_bit_for_bit(photo_shards, tmp_path, method):
    # 3 + 4 steps cross the epoch boundary after step 5 (the loader starts a new epoch's pipeline).
    whole = train(config(method, photo_shards, tmp_path / "whole", "train.max_steps=7"))
    cut = config(method, photo_shards, tmp_path / "cut", "train.max_steps=3")
    train(cut)
    assert final_state(tmp_path / "cut" / f"{method}_small")["step"] == 3
    resumed = train(config(method, photo_shards, tmp_path / "cut", "train.max_steps=7"), resume="auto")
    a, b = final_state(whole), final_state(resumed)
    assert a["step"] == b["step"] == 7
    for key in ("model", "optimizer", "ranks"):
        assert_identical(a[key], b[key], key)
    lines = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    drop_timing = lambda row: {k: v for k, v in row.items() if k not in ("images_per_s", "data_wait")}  # noqa: E731
    assert [drop_timing(r) for r in lines(whole)] == [drop_timing(r) for r in lines(resumed)]


def test_colorization_keeps_its_prior_beside_the_run_and_in_its_checkpoints(photo_shards, tmp_path):
    run = train(config("colorization", photo_shards, tmp_path, "train.max_steps=2"))
    prior, factor = np.load(run / "ab_prior.npy"), np.load(run / "ab_rebalancing_factor.npy")
    assert prior.shape == factor.shape == (313,) and prior.sum() == pytest.approx(1.0)
    assert (prior * factor).sum() == pytest.approx(1.0, rel=1e-6)   # the expected weight of a pixel
    model = final_state(run)["model"]
    assert np.array_equal(prior, model["prior"].numpy()) and np.allclose(factor, model["factor"].numpy())


def test_resume_refuses_a_changed_setting(photo_shards, tmp_path):
    train(config("simclr", photo_shards, tmp_path, "train.max_steps=2"))
    with pytest.raises(SslpipeError, match="cannot resume from .*last.pt: optim.lr was 0.3, now 0.5"):
        train(config("simclr", photo_shards, tmp_path, "optim.lr=0.5"), resume="auto")
    with pytest.raises(SslpipeError, match="already holds checkpoints: add --resume"):
        train(config("simclr", photo_shards, tmp_path))
    with pytest.raises(SslpipeError, match="nowhere: no checkpoint there"):
        train(config("simclr", photo_shards, tmp_path), resume=tmp_path / "nowhere")


def nan_at_step(monkeypatch, index):
    forward = SimCLR.forward

    def poisoned(self, views, step):
        out = forward(self, views, step)
        if step.index == index:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", poisoned)


def test_a_nonfinite_loss_stops_with_the_last_good_checkpoint_intact(photo_shards, tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 2)
    with pytest.raises(SslpipeError, match=r"the loss is nan at step 2 \(epoch 0\); stopped before updating"):
        train(config("simclr", photo_shards, tmp_path, "train.checkpoint_every=1"))
    last = final_state(tmp_path / "simclr_small")
    assert last["step"] == 2  # steps 0 and 1 were good; step 2 changed nothing
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_nonfinite_loss_can_be_skipped_and_counted(photo_shards, tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 2)
    run_dir = train(config("simclr", photo_shards, tmp_path, "train.nonfinite_loss=skip",
                           "train.max_steps=4"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 0, 1, 1]
    assert "loss" not in rows[2] and all(r["loss"] > 0 for r in rows if r["step"] != 3)  # no nan logged
    model = final_state(run_dir)["model"]
    assert all(torch.isfinite(v).all() for v in model.values() if v.is_floating_point())


def test_a_crash_while_saving_leaves_the_previous_checkpoint_loadable(photo_shards, tmp_path, monkeypatch):
    saves, save = [], torch.save

    def crash_on_the_third(state, f):
        saves.append(1)
        if len(saves) == 3:
            f.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        save(state, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_on_the_third)
    full = (r"no space left on .*checkpoints while saving the checkpoint of step 3: nothing of it was kept, "
            r"the previous checkpoint .*last.pt is intact; free space and continue with --resume")
    with pytest.raises(SslpipeError, match=full):
        train(config("simclr", photo_shards, tmp_path, "train.checkpoint_every=1"))
    folder = tmp_path / "simclr_small" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["last.pt", "step-00000001.pt", "step-00000002.pt"]
    assert load_checkpoint(folder / "last.pt")["step"] == 2
    monkeypatch.undo()
    train(config("simclr", photo_shards, tmp_path, "train.checkpoint_every=1", "train.max_steps=3"),
          resume="auto")
    assert final_state(tmp_path / "simclr_small")["step"] == 3


def test_old_checkpoints_are_pruned_after_the_new_one_is_written(photo_shards, tmp_path):
    run_dir = train(config("simclr", photo_shards, tmp_path, "train.checkpoint_every=1",
                           "train.keep_checkpoints=1", "train.max_steps=3"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step-00000003.pt"]


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SslpipeError, match="bad.pt: cannot load the checkpoint"):
        load_checkpoint(bad)


def test_sslpipe_train_command(photo_shards, tmp_path, capsys):
    code = main(["train", str(RECIPES / "mocov2_small.yaml"), f"data.train={photo_shards}",
                 "data.batch_size=8", f"train.out={tmp_path}", "train.max_steps=1", *SMALL["mocov2"]])
    assert code == 0
    assert f"run folder: {tmp_path / 'mocov2_small'}" in capsys.readouterr().out
    assert main(["train", str(RECIPES / "mocov2_small.yaml"), "optim.lr=fast"]) == 2
    assert "sslpipe: error: override 'optim.lr=fast': optim.lr: expected a number" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["simclr", "swav"])
def test_bf16_autocast_trains_with_float32_losses(photo_shards, tmp_path, method):
    # On a GPU bf16 is the default; the CPU runs the same autocast path when asked.
    run_dir = train(config(method, photo_shards, tmp_path, "train.precision=bf16", "train.max_steps=2"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert "precision: bf16" in (run_dir / "config.yaml").read_text()
    model = final_state(run_dir)["model"]
    assert all(v.dtype == torch.float32 for v in model.values() if v.is_floating_point())  # fp32 weights


def test_resume_refuses_an_edited_spec_naming_what_changed(photo_shards, tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text((RECIPES.parent / "pipelines" / "small_simclr.yaml").read_text())
    train(config("simclr", photo_shards, tmp_path, f"data.pipeline={spec}", "train.max_steps=2"))
    spec.write_text(spec.read_text().replace("grayscale: 0.2", "grayscale: 0.3"))
    changed = (r"cannot resume: the pipeline spec 'small_simclr' \(.*mine.yaml\) differs from the one the "
               r"saved loader ran .*views\[0\].grayscale.p: 0.2 -> 0.3")
    with pytest.raises(SslpipeError, match=changed):
        train(config("simclr", photo_shards, tmp_path, f"data.pipeline={spec}", "train.max_steps=4"),
              resume="auto")
    config_yaml = (tmp_path / "simclr_small" / "config.yaml").read_text()
    assert "fingerprint:" in config_yaml and "recipe_fingerprint:" in config_yaml


def test_impossible_optimizer_settings_are_refused(photo_shards, tmp_path):
    with pytest.raises(SslpipeError, match=r"optim: clip_grad_norm must be > 0"):
        config("simclr", photo_shards, tmp_path, "optim.clip_grad_norm=-1")
    with pytest.raises(SslpipeError, match=r"optim.lr: expected a finite number, got inf"):
        config("simclr", photo_shards, tmp_path, "optim.lr=.inf")


def test_data_size_rescales_the_training_spec(photo_shards, tmp_path):
    run_dir = train(config("simclr", photo_shards, tmp_path, "data.size=32", "train.max_steps=1"))
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["resolved"]["spec"]["name"].endswith("@32")
    with pytest.raises(SslpipeError, match="'data.size=0': data: size must be >= 1"):
        config("simclr", photo_shards, tmp_path, "data.size=0")
