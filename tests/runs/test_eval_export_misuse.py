"""Misuse of `sslpipe eval` and `sslpipe export`: each ends with one `sslpipe: error:` line naming
the file or option at fault (exit status 2, no traceback) and leaves nothing behind."""

import collections
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from sslpipe.cli import main
from sslpipe.errors import SslpipeError
from sslpipe.models import resnet18
from sslpipe.runs import evaluate as evaluate_module
from sslpipe.train.run_folder import RunFolder


@pytest.fixture(scope="module")
def weights():
    """A ResNet-18's backbone weights (torchvision's keys); copy before changing them."""
    return resnet18().state_dict()


def checkpoint(weights, backbone="resnet18", small_images=False, **config):
    """A dict shaped as `Checkpointer.save` writes it (one process, a method with a projector)."""
    model = {f"backbone.{k}": v for k, v in weights.items()}
    model["projector.0.weight"] = torch.zeros(4, 512)
    return {"version": 2, "step": 7, "ranks": [{"loader": {}, "method": {}, "rng": {}}],
            "config": {"model": {"backbone": backbone, "small_images": small_images}, **config},
            "model": model, "optimizer": None, "scaler": None, "progress": {"step": 7, "skipped": 0}}


def make_run(folder, state, config_yaml="model:\n  backbone: resnet18\n"):
    """A run folder holding `checkpoints/last.pt` (`state`, or raw bytes) and `config.yaml`."""
    (folder / "checkpoints").mkdir(parents=True)
    last = folder / "checkpoints" / "last.pt"
    if isinstance(state, bytes):
        last.write_bytes(state)
    else:
        torch.save(state, last)
    (folder / "config.yaml").write_text(config_yaml)
    return folder


def misuse(capsys, *argv) -> str:
    """Run the command; check it failed with one `sslpipe: error:` line and return that message."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sslpipe: error: "), err
    return lines[0].removeprefix("sslpipe: error: ")


@pytest.fixture
def run(tmp_path, weights, photo_shards):
    """A valid run whose config names the fixture's shards for the evaluation."""
    return make_run(tmp_path / "run", checkpoint(weights, data={"train": photo_shards},
                                                 eval={"val": photo_shards, "size": 32}))


@pytest.fixture
def no_extraction(monkeypatch):
    """Fail a test that reaches the (slow) feature extraction: the misuse must be found before."""
    def extract(*args, **kwargs):
        raise AssertionError("features extracted before the inputs were checked")

    monkeypatch.setattr(evaluate_module, "extract_features", extract)


@pytest.fixture
def tiny_disk(tmpfs):
    """A 64 KiB file system: a ResNet-18's backbone (45 MB) does not fit."""
    return tmpfs("disk", "size=64k")


@pytest.fixture
def read_only_folder(tmp_path, tmpfs):
    """A folder this process cannot write into: chmod'ed, or (root ignores permissions) a
    read-only tmpfs."""
    where = tmp_path / "chmod"
    where.mkdir()
    where.chmod(0o555)
    writable = os.access(where, os.W_OK)
    yield tmpfs("read-only", "ro,size=64k") if writable else where
    where.chmod(0o755)  # for pytest's clean-up of tmp_path


# A checkpoint that is not one of a run: eval and export say what the file is and what was expected.

@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_plain_state_dict_is_not_a_run_checkpoint(command, tmp_path, weights, capsys):
    plain = tmp_path / "resnet18.pt"
    torch.save(weights, plain)
    message = misuse(capsys, command, plain)
    assert message.startswith(f"{plain}: a plain state dict (")
    assert "'conv1.weight'" in message and "not a run checkpoint" in message
    assert "expected an sslpipe training checkpoint" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resnet18.pt"]  # no export/ folder


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_checkpoint_without_config(command, tmp_path, weights, capsys):
    state = checkpoint(weights)
    del state["config"]
    run = make_run(tmp_path / "run", state)
    message = misuse(capsys, command, run)
    assert message.startswith(f"{run / 'checkpoints' / 'last.pt'}: not an sslpipe training checkpoint: "
                              f"it has no 'config'")
    assert "expected an sslpipe training checkpoint" in message
    assert not (run / "export").exists()


# Files that torch cannot (or must not) load.

@pytest.mark.parametrize("command, text", [("eval", "not a checkpoint"),
                                           ("export", "model:\n  backbone: resnet18\n")])
def test_a_text_file_is_not_a_torch_checkpoint(command, text, tmp_path, capsys):
    fake = tmp_path / "model.pt"
    fake.write_text(text)
    message = misuse(capsys, command, fake)
    assert message.startswith(f"{fake}: cannot load the checkpoint: not a torch checkpoint")
    assert "weights_only" not in message


def test_a_truncated_checkpoint(tmp_path, weights, capsys):
    whole = tmp_path / "whole.pt"
    torch.save(checkpoint(weights), whole)
    half = tmp_path / "half.pt"
    half.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    message = misuse(capsys, "export", half)
    assert message.startswith(f"{half}: cannot load the checkpoint: truncated or corrupt")
    assert "weights_only" not in message


def test_an_empty_checkpoint_file(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert misuse(capsys, "eval", empty).startswith(f"{empty}: cannot load the checkpoint: empty file")


class Custom:
    pass


def test_a_checkpoint_holding_objects_is_refused_for_safety(tmp_path, weights, capsys):
    state = checkpoint(weights)
    state["extra"] = {"counter": collections.Counter(a=1), "custom": Custom()}
    unsafe = tmp_path / "unsafe.pt"
    torch.save(state, unsafe)
    message = misuse(capsys, "export", unsafe)
    assert message.startswith(f"{unsafe}: cannot load the checkpoint: refused for safety: it holds objects "
                              f"other than tensors and plain values")
    assert "sslpipe checkpoints never do" in message and "weights_only" not in message


# The output folder of export.

def test_export_onto_an_existing_file(tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    target = tmp_path / "backbone.safetensors"
    target.write_bytes(b"someone's file")
    message = misuse(capsys, "export", run, "-o", target)
    assert message.startswith(f"{target}: a file, not a folder")
    assert target.read_bytes() == b"someone's file"


@pytest.mark.parametrize("inside", [False, True])
def test_export_into_a_read_only_folder(inside, read_only_folder, tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    out = read_only_folder / "export" if inside else read_only_folder
    message = misuse(capsys, "export", run, "-o", out)
    assert str(out) in message and ("cannot create" in message if inside else "cannot write into" in message)
    assert list(read_only_folder.iterdir()) == []


def test_export_under_proc(tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    out = "/proc/sslpipe-x/export"
    message = misuse(capsys, "export", run, "-o", out)
    assert message.startswith(f"cannot create the output folder {out}")
    assert not os.path.exists("/proc/sslpipe-x")


def test_export_removes_only_the_folders_it_created(tmp_path, weights, capsys):
    weights = dict(weights, **{"conv1.weight": torch.full_like(weights["conv1.weight"], float("nan"))})
    run = make_run(tmp_path / "run", checkpoint(weights))
    (tmp_path / "mine").mkdir()
    misuse(capsys, "export", run, "-o", tmp_path / "mine" / "a" / "b")
    assert (tmp_path / "mine").is_dir() and list((tmp_path / "mine").iterdir()) == []


def test_export_refuses_non_finite_weights(tmp_path, weights, capsys):
    weights = {k: v.clone() for k, v in weights.items()}
    weights["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    weights["bn1.running_var"][3] = float("inf")
    run = make_run(tmp_path / "run", checkpoint(weights))
    message = misuse(capsys, "export", run)
    assert message.startswith(f"{run / 'checkpoints' / 'last.pt'}: 2 of the backbone's")
    assert "NaN or inf" in message and "'bn1.running_var'" in message
    assert not (run / "export").exists()


def test_export_on_a_full_disk(tiny_disk, tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    message = misuse(capsys, "export", run, "-o", tiny_disk / "export")
    assert message.startswith(f"no space left on {tiny_disk / 'export'}: nothing was written")
    assert "free space and rerun the same command" in message
    assert list(tiny_disk.iterdir()) == []  # neither the partial file nor the folder export made


def test_a_full_disk_keeps_the_previous_export(tiny_disk, tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    (tiny_disk / "backbone.safetensors").write_bytes(b"the previous export")
    (tiny_disk / "config.yaml").write_text("the previous config\n")
    assert misuse(capsys, "export", run, "-o", tiny_disk).startswith(f"no space left on {tiny_disk}")
    assert (tiny_disk / "backbone.safetensors").read_bytes() == b"the previous export"
    assert (tiny_disk / "config.yaml").read_text() == "the previous config\n"
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["backbone.safetensors", "config.yaml"]


def test_export_still_writes_the_backbone(tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights))
    assert main(["export", str(run)]) == 0
    assert sorted(p.name for p in (run / "export").iterdir()) == ["backbone.safetensors", "config.yaml"]
    exported = load_file(run / "export" / "backbone.safetensors")
    assert exported.keys() == weights.keys()
    assert torch.equal(exported["conv1.weight"], weights["conv1.weight"])
    assert (run / "export" / "config.yaml").read_text() == (run / "config.yaml").read_text()


# The backbone's architecture.

@pytest.mark.parametrize("command", ["eval", "export"])
def test_another_architecture_is_one_line(command, tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights, backbone="resnet50"))
    message = misuse(capsys, command, run)
    assert message.startswith(f"{run / 'checkpoints' / 'last.pt'}: its backbone does not fit resnet50")
    assert "missing" in message and "unexpected" in message and "shape" in message
    assert "'layer1.0.conv3.weight'" in message  # resnet50's first key that resnet18 lacks


def test_small_images_mismatch_names_the_key_and_shapes(tmp_path, weights, capsys):
    run = make_run(tmp_path / "run", checkpoint(weights, small_images=True))
    message = misuse(capsys, "export", run)
    assert "does not fit resnet18 (small_images=True)" in message
    assert "1 of another shape (first 'conv1.weight': [64, 3, 7, 7] here, [64, 3, 3, 3] expected)" in message


# The options of eval, checked before any feature is extracted.

def test_eval_on_cuda_without_a_gpu(run, monkeypatch, no_extraction, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert misuse(capsys, "eval", run, "--device", "cuda") == (
        "--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False)")


@pytest.mark.parametrize("device", ["bogus", "mps", "cuda:x"])
def test_eval_on_an_unknown_device(device, run, no_extraction, capsys):
    message = misuse(capsys, "eval", run, "--device", device)
    assert message.startswith(f"--device {device}: ") and "cpu or cuda" in message


@pytest.mark.parametrize("option", ["--val", "--train"])
def test_a_mistyped_shard_pattern(option, run, photo_shards, no_extraction, capsys):
    typo = photo_shards.replace("train-", "trian-")
    message = misuse(capsys, "eval", run, option, typo)
    assert message.startswith(f"{option} '{typo}': no shards match")


def test_a_mistyped_pattern_of_the_runs_config(tmp_path, weights, photo_shards, no_extraction, capsys):
    typo = photo_shards.replace("train-", "trian-")
    run = make_run(tmp_path / "run", checkpoint(weights, data={"train": photo_shards}, eval={"val": typo}))
    message = misuse(capsys, "eval", run)
    assert message.startswith(f"eval.val '{typo}' (the run's config; --val overrides it): no shards match")


@pytest.mark.parametrize("option, extra", [("--pipeline", []), ("--finetune-pipeline", ["--semisup", "0.5"])])
def test_a_mistyped_pipeline(option, extra, run, no_extraction, capsys):
    message = misuse(capsys, "eval", run, option, "evl", *extra)
    assert message.startswith(f"{option} 'evl': no pipeline spec named 'evl'")


def test_eval_into_a_read_only_run_folder(tmpfs, weights, photo_shards, no_extraction, capsys):
    disk = tmpfs("runs", "size=128m")
    run = make_run(disk / "run", checkpoint(weights))
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    message = misuse(capsys, "eval", run, "--val", photo_shards)
    assert message.startswith(f"{run}: cannot write into the run folder") and "eval.json" in message


# Nothing to evaluate or export.

@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_missing_path(command, tmp_path, capsys):
    message = misuse(capsys, command, tmp_path / "nowhere")
    assert message.startswith(f"{tmp_path / 'nowhere'}: no checkpoint there")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_run_folder_without_checkpoints(command, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {}\n")
    assert misuse(capsys, command, tmp_path / "run").startswith(f"{tmp_path / 'run'}: no checkpoint there")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml"]


def test_eval_json_on_a_full_disk_is_one_line_and_keeps_the_previous_report(tiny_disk):
    run = RunFolder(tiny_disk)
    run.write_eval({"knn": 1})
    with pytest.raises(OSError), open(tiny_disk / "filler", "wb") as f:
        while True:
            f.write(bytes(4096))
            f.flush()
    with pytest.raises(SslpipeError) as refused:
        run.write_eval({"knn": 2, "padding": "x" * 10_000})
    assert str(refused.value) == (f"no space left on {run.eval_report}: the evaluation's results were not "
                                  f"kept; free space and run the same command again")
    assert json.loads(run.eval_report.read_text()) == {"knn": 1}
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["eval.json", "filler"]
