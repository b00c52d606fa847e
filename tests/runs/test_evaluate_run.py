"""The protocols on a trained run: online kNN during pretraining, `sslpipe eval`, `sslpipe export`."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sslpipe.cli import main
from sslpipe.errors import SslpipeError
from sslpipe.eval import features as features_module
from sslpipe.eval import finetune as finetune_module
from sslpipe.models import resnet18
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.runs.evaluate import evaluate_run, results_table
from sslpipe.train.checkpoint import load_checkpoint
from sslpipe.train.config import load_config
from sslpipe.train.loop import train

RECIPES = Path(__file__).parents[2] / "recipes"


@pytest.fixture(scope="module")
def run_dir(photo_shards, tmp_path_factory):
    """Two short SimCLR epochs on the fixture photos, with the online kNN on (the same shards serve
    as held-out split: the tests check behaviour, not accuracy)."""
    out = tmp_path_factory.mktemp("runs")
    config = load_config(RECIPES / "simclr_small.yaml", [
        f"data.train={photo_shards}", "data.batch_size=8", f"train.out={out}", "train.epochs=2",
        "method.projector=[64, 32]", f"eval.val={photo_shards}", "eval.size=64",
        "eval.every_epochs=1", "eval.batch_size=16"])
    return train(config)


def test_the_online_knn_is_logged_after_every_epoch(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    knn = [r for r in rows if "knn_top1" in r]
    assert [r["epoch"] for r in knn] == [0, 1]
    assert all(0 <= r["knn_top1"] <= 100 and r["knn_k"] == 20 for r in knn)  # a small set: k = 20
    assert knn[-1]["step"] == rows[-1]["step"]


def test_eval_compares_the_run_with_a_random_backbone(run_dir, photo_shards, monkeypatch):
    specs = []  # the specs the protocols' loaders really ran

    class Recording(ViewLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            specs.append((self.spec.name, self.spec.views[0].size))

    for module in (features_module, finetune_module):
        monkeypatch.setattr(module, "ViewLoader", Recording)
    report = evaluate_run(run_dir, val=photo_shards, semisup=(0.5,), linear_epochs=5, finetune_epochs=1,
                          augmented_probe_epochs=1, device="cpu")
    # The run's eval section: `eval` for features, `finetune` for training through the backbone, both
    # at the recipe's eval.size of 64 (not the specs' own 224).
    assert set(specs) == {("eval@64", 64), ("finetune@64", 64)}
    assert set(report["results"]) == {"pretrained", "random"}
    for result in report["results"].values():
        assert set(result) == {"knn", "linear", "linear_augmented", "finetune_0.5"}
        assert all(0 <= result[p]["top1"] <= 100 and "top5" in result[p] for p in result)
    labelled = {r["finetune_0.5"]["labelled"] for r in report["results"].values()}
    assert len(labelled) == 1 and labelled.pop() >= 5  # the same subset for both, every class in it
    assert json.loads((run_dir / "eval.json").read_text()) == report
    # The specs came from the run's eval section, at its eval.size (not guessed from a name).
    assert (report["pipeline"], report["finetune_pipeline"], report["size"]) == ("eval", "finetune", 64)
    table = results_table(report["results"])
    assert "| kNN (k=20) top1 |" in table and "| linear probe top1 |" in table
    assert "fine-tune on 50%" in table and "| linear probe, augmented (1 epochs) top1 |" in table
    assert table.splitlines()[0] == "| protocol | pretrained | random |"


def test_eval_needs_a_held_out_split(tmp_path, photo_shards):
    config = load_config(RECIPES / "simclr_small.yaml", [
        f"data.train={photo_shards}", "data.batch_size=8", f"train.out={tmp_path}", "train.max_steps=1",
        "method.projector=[64, 32]"])
    run = train(config)
    with pytest.raises(SslpipeError, match="names no labelled held-out split .*--val"):
        evaluate_run(run)


def test_export_writes_torchvision_keys_that_load_strictly(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "-o", str(tmp_path / "export")]) == 0
    assert "backbone.safetensors" in capsys.readouterr().out
    weights = load_file(tmp_path / "export" / "backbone.safetensors")
    resnet18().load_state_dict(weights)  # torchvision's keys without fc, strictly
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key, value in weights.items():
        assert torch.equal(value, checkpoint["model"][f"backbone.{key}"])
    assert (tmp_path / "export" / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    for written in (tmp_path / "export" / "backbone.safetensors", run_dir / "backbone.safetensors"):
        with safe_open(written, "pt") as f:
            assert f.metadata()["keys"] == "torchvision" and f.metadata()["architecture"] == "resnet18"


def test_export_of_nothing_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint there" in capsys.readouterr().err


def test_sslpipe_eval_prints_the_table(run_dir, photo_shards, capsys):
    assert main(["eval", str(run_dir), "--val", photo_shards, "--linear-epochs", "2", "--no-random",
                 "--size", "32", "--finetune-pipeline", "finetune"]) == 0
    out = capsys.readouterr().out
    assert "| protocol | pretrained |" in out and "kNN (k=20)" in out
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["size"] == 32 and set(report["results"]) == {"pretrained"}
