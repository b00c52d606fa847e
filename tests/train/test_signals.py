"""SIGTERM (Slurm's warning before a kill) and Ctrl-C: the step finishes, a checkpoint is written
on every process's behalf, the resume command is printed, the exit status is not 0; the resumed
run equals the uninterrupted one."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from run_helpers import RECIPES, SMALL, assert_identical, final_state

from sslpipe.cli import main
from sslpipe.methods import SimCLR
from sslpipe.train.checkpoint import load_checkpoint


def args(shards, out, *more):
    """The command line of a small SimCLR run; `more` replaces the settings here of the same keys."""
    base = [f"data.train={shards}", "data.batch_size=8", f"train.out={out}", "train.epochs=2",
            "train.log_every=1", "data.num_threads=1", "train.max_steps=6", *SMALL["simclr"]]
    given = {o.partition("=")[0] for o in more}
    return [str(RECIPES / "simclr_small.yaml"), *[o for o in base if o.partition("=")[0] not in given], *more]


def signal_at_step(monkeypatch, index, *signums):
    """This process receives `signums` during the forward of step `index`."""
    forward = SimCLR.forward

    def signalled(self, batch, step):
        if step.index == index:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return forward(self, batch, step)

    monkeypatch.setattr(SimCLR, "forward", signalled)


def rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "data_wait")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_and_says_how_to_resume(signum, photo_shards, tmp_path, monkeypatch, capsys):
    assert main(["train", *args(photo_shards, tmp_path / "whole")]) == 0
    signal_at_step(monkeypatch, 1, signum)  # the second step, mid-epoch, between checkpoints
    code = main(["train", *args(photo_shards, tmp_path / "cut")])
    err = capsys.readouterr().err
    assert code == 128 + signum and "Traceback" not in err
    run_dir = tmp_path / "cut" / "simclr_small"
    assert f"stopped by {signal.Signals(signum).name} after step 2; its checkpoint is " \
           f"{run_dir / 'checkpoints' / 'last.pt'}" in err
    assert "continue with: sslpipe train " in err and err.rstrip().endswith("--resume")
    assert final_state(run_dir)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back
    monkeypatch.undo()
    assert main(["train", *args(photo_shards, tmp_path / "cut"), "--resume"]) == 0
    whole = tmp_path / "whole" / "simclr_small"
    assert rows(run_dir) == rows(whole)
    for key in ("model", "optimizer", "ranks"):
        assert_identical(final_state(whole)[key], final_state(run_dir)[key], key)


def test_a_second_ctrl_c_stops_at_once_without_saving(photo_shards, tmp_path, monkeypatch, capsys):
    signal_at_step(monkeypatch, 1, signal.SIGINT, signal.SIGINT)
    assert main(["train", *args(photo_shards, tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "Ctrl-C again stops at once, without saving" in err and "sslpipe: interrupted" in err
    assert not (tmp_path / "simclr_small" / "checkpoints" / "last.pt").exists()


def test_sigterm_twice_is_one_request(photo_shards, tmp_path, monkeypatch, capsys):
    # Slurm signals every process of the step, and the launcher passes its own SIGTERM on too.
    signal_at_step(monkeypatch, 2, signal.SIGTERM, signal.SIGTERM)
    assert main(["train", *args(photo_shards, tmp_path)]) == 143
    assert final_state(tmp_path / "simclr_small")["step"] == 3
    assert capsys.readouterr().err.count("SIGTERM: stopping after this step") == 1


def test_sigterm_to_accelerate_launch_stops_both_processes_after_the_same_step(photo_shards, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(port), "-m", "sslpipe.train",
               *args(photo_shards, tmp_path, "train.max_steps=null", "train.epochs=50", "data.batch_size=16")]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    metrics = tmp_path / "simclr_small" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # what Slurm's --signal (or scancel) sends the launcher
    _, err = process.communicate(timeout=300)
    assert process.returncode != 0
    saved = load_checkpoint(tmp_path / "simclr_small" / "checkpoints" / "last.pt")
    assert len(saved["ranks"]) == 2 and 2 <= saved["step"] < 100  # stopped long before the 50 epochs
    assert err.count(f"stopped by SIGTERM after step {saved['step']}") == 1  # the main process says it
    assert "continue with: the same launch with --resume" in err
