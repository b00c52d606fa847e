"""Runs killed at awkward moments, and runs that went wrong: what a restart finds, what the
metrics file says after a resume, and which endings are not a success."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from run_helpers import SMALL, assert_identical, config, final_state

from sslpipe.cli import main
from sslpipe.errors import SslpipeError
from sslpipe.methods import SimCLR
from sslpipe.train import loop
from sslpipe.train.checkpoint import Checkpointer
from sslpipe.train.loop import train


class Killed(BaseException):
    """What a kill -9 does to the loop, in this process: nothing after it runs (no handler
    catches a BaseException that is not an Exception)."""


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(table):
    return [{k: v for k, v in row.items() if k not in ("images_per_s", "data_wait")} for row in table]


def kill_at_save(monkeypatch, step):
    """The process dies when it is about to write the checkpoint of `step`."""
    save = Checkpointer.save

    def dying(self, at, config):
        if at == step:
            raise Killed
        save(self, at, config)

    monkeypatch.setattr(Checkpointer, "save", dying)


# After every resume metrics.jsonl reads as the uninterrupted run's: rows after the checkpoint are
# dropped and logged again, over the same steps (the log window is part of the checkpoint).
@pytest.mark.parametrize("method", ["simclr", "mocov2", "swav", "simsiam"])
def test_a_kill_after_the_last_checkpoint_leaves_metrics_as_the_uninterrupted_run(
        method, photo_shards, tmp_path, monkeypatch):
    settings = ["train.max_steps=7", "train.checkpoint_every=2", "train.log_every=3"]
    whole = train(config(method, photo_shards, tmp_path / "whole", *settings))
    assert [r["step"] for r in rows(whole)] == [3, 5, 6]  # 5: the epoch's end; 7 is in no row yet
    kill_at_save(monkeypatch, 4)  # after the row of step 3, which averages steps 1-3
    with pytest.raises(Killed):
        train(config(method, photo_shards, tmp_path / "cut", *settings))
    cut = tmp_path / "cut" / f"{method}_small"
    assert [r["step"] for r in rows(cut)] == [3] and final_state(cut)["step"] == 2
    monkeypatch.undo()
    train(config(method, photo_shards, tmp_path / "cut", *settings), resume="auto")
    assert without_timing(rows(cut)) == without_timing(rows(whole))
    a, b = final_state(whole), final_state(cut)
    for key in ("model", "optimizer", "ranks", "progress"):
        assert_identical(a[key], b[key], key)


def test_a_kill_during_the_online_knn_makes_its_row_on_resume(photo_shards, tmp_path, monkeypatch):
    settings = [f"eval.val={photo_shards}", "train.max_steps=6", "eval.knn_k=5"]
    whole = train(config("simclr", photo_shards, tmp_path / "whole", *settings))
    knn = loop.knn_evaluation

    def dying(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(loop, "knn_evaluation", dying)
    with pytest.raises(Killed):  # after the checkpoint of step 5, the epoch's end
        train(config("simclr", photo_shards, tmp_path / "cut", *settings))
    cut = tmp_path / "cut" / "simclr_small"
    assert final_state(cut)["step"] == 5 and not any("knn_top1" in r for r in rows(cut))
    monkeypatch.setattr(loop, "knn_evaluation", knn)
    train(config("simclr", photo_shards, tmp_path / "cut", *settings), resume="auto")
    assert [r["epoch"] for r in rows(cut) if "knn_top1" in r] == [0]
    assert without_timing(rows(cut)) == without_timing(rows(whole))


# A kill -9 during the first save: a partial temporary file and no checkpoint. Both a fresh start
# and --resume must take that run (they once refused: "already holds checkpoints" / "no checkpoint").
KILLED_MID_SAVE = """
import sys, time
import torch
from sslpipe.train import checkpoint

def slow(state, f):
    f.write(b"x" * 1_000_000)
    f.flush()
    time.sleep(600)  # the test kills the process here

checkpoint.torch.save = slow
from sslpipe.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""


@pytest.mark.parametrize("restart", ["fresh", "--resume"])
def test_a_run_killed_during_its_first_save_starts_again(restart, photo_shards, tmp_path, capsys):
    args = [str(loop.Path(__file__).parents[2] / "recipes" / "simclr_small.yaml"),
            f"data.train={photo_shards}", "data.batch_size=8", f"train.out={tmp_path}", "train.epochs=2",
            "train.log_every=1", "data.num_threads=1", "train.checkpoint_every=2", "train.max_steps=3",
            *SMALL["simclr"]]
    process = subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, *args], stderr=subprocess.DEVNULL)
    partial = tmp_path / "simclr_small" / "checkpoints" / ".step-00000002.pt.tmp"
    deadline = time.monotonic() + 300
    while not (partial.is_file() and partial.stat().st_size >= 1_000_000) and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before its first save"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_dir = tmp_path / "simclr_small"
    assert partial.is_file() and len(rows(run_dir)) == 2  # what the kill left: steps 1-2 logged

    assert main(["train", *args, *(["--resume"] if restart == "--resume" else [])]) == 0
    err = capsys.readouterr().err
    assert f"removed {partial}, left by a save that was killed midway" in err
    if restart == "--resume":
        assert f"{run_dir} holds no checkpoint yet: the run starts at step 0" in err
    assert not partial.exists()
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3]  # not 1, 2, 1, 2, 3
    assert final_state(run_dir)["step"] == 3


def nan_from_step(monkeypatch, first):
    forward = SimCLR.forward

    def poisoned(self, batch, step):
        out = forward(self, batch, step)
        if step.index >= first:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", poisoned)


def test_a_run_that_skipped_every_step_is_not_a_success(photo_shards, tmp_path, monkeypatch, capsys):
    nan_from_step(monkeypatch, 0)
    recipe = str(loop.Path(__file__).parents[2] / "recipes" / "simclr_small.yaml")
    code = main(["train", recipe, f"data.train={photo_shards}", "data.batch_size=8", f"train.out={tmp_path}",
                 "train.epochs=1", "train.nonfinite_loss=skip", "data.num_threads=1", *SMALL["simclr"]])
    assert code == 2
    assert ("sslpipe: error: all 5 steps had a non-finite loss and were skipped (train.nonfinite_loss=skip): "
            "nothing was learned") in capsys.readouterr().err
    assert not (tmp_path / "simclr_small" / "backbone.safetensors").exists()


def test_non_finite_weights_are_never_saved(photo_shards, tmp_path, monkeypatch):
    # An update that overflows while the loss stays finite (the skip cannot see it; the save does).
    def overflowing(self, step):
        if step.index == 1:
            self.backbone.conv1.weight.data[0, 0, 0, 0] = float("inf")

    monkeypatch.setattr(SimCLR, "after_optimizer_step", overflowing)
    refused = (r"after step 2, 1 of the model's \d+ tensors hold nan or inf \(the first: "
               r"backbone.conv1.weight\); not saved. The last good checkpoint is .*last.pt")
    with pytest.raises(SslpipeError, match=refused):
        train(config("simclr", photo_shards, tmp_path, "train.checkpoint_every=1",
                     "train.nonfinite_loss=skip"))
    saved = final_state(tmp_path / "simclr_small")
    assert saved["step"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


@pytest.fixture
def small_disk(tmpfs):
    """A 60 MiB file system: a ResNet-18 run's first checkpoint (about 45 MiB) fits, not two."""
    return tmpfs("disk", "size=60m")


def test_a_full_disk_while_saving_says_so_and_keeps_the_last_checkpoint(photo_shards, small_disk, capsys):
    recipe = str(loop.Path(__file__).parents[2] / "recipes" / "simclr_small.yaml")
    args = [recipe, f"data.train={photo_shards}", "data.batch_size=8", f"train.out={small_disk}",
            "train.epochs=1", "train.checkpoint_every=1", "data.num_threads=1", "train.keep_checkpoints=3",
            "optim.name=sgd", "optim.momentum=0", *SMALL["simclr"]]  # no momentum buffers: smaller saves
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    checkpoints = small_disk / "simclr_small" / "checkpoints"
    line = [x for x in err.splitlines() if x.startswith("sslpipe: error:")]
    assert line == [f"sslpipe: error: no space left on {checkpoints} while saving the checkpoint of step 2: "
                    f"nothing of it was kept, the previous checkpoint {checkpoints / 'last.pt'} is intact; "
                    f"free space and continue with --resume"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt", "step-00000001.pt"]
    assert final_state(small_disk / "simclr_small")["step"] == 1


def test_a_full_disk_at_the_backbone_says_so_and_resume_writes_it(photo_shards, small_disk, tmpfs, capsys):
    recipe = str(loop.Path(__file__).parents[2] / "recipes" / "simclr_small.yaml")
    args = [recipe, f"data.train={photo_shards}", "data.batch_size=40", f"train.out={small_disk}",
            "train.epochs=1", "data.num_threads=1", "optim.name=sgd", "optim.momentum=0",
            *SMALL["simclr"]]
    # One step of one epoch: the run's end; its checkpoint fits, the backbone beside it does not.
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    run = small_disk / "simclr_small"
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("sslpipe: error:")] == [
        f"sslpipe: error: no space left on {run / 'backbone.safetensors'}: training finished and its last "
        f"checkpoint is intact, the backbone was not written; free space and run the same command "
        f"with --resume"]
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl"]
    tmpfs("disk", "size=160m")  # space freed
    assert main(["train", *args, "--resume"]) == 0
    assert (run / "backbone.safetensors").stat().st_size > 40e6


def test_a_backbone_file_left_by_a_kill_is_removed_at_the_next_start(photo_shards, tmp_path, capsys):
    run = tmp_path / "simclr_small"
    run.mkdir()
    (run / ".backbone.safetensors.tmp").write_bytes(b"half a backbone")
    train(config("simclr", photo_shards, tmp_path, "train.max_steps=1"))
    assert f"removed {run / '.backbone.safetensors.tmp'}" in capsys.readouterr().err
    assert not (run / ".backbone.safetensors.tmp").exists()
