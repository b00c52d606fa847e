"""The README's main command, in its quick variant (every step, a tiny dataset, two epochs)."""

import json
from pathlib import Path

from sslpipe.cli import main
from sslpipe.demo import QUICK, run_demo
from sslpipe.train.config import DataConfig, load_config

RECIPES = Path(__file__).parents[1] / "recipes"


def test_the_demo_runs_end_to_end_and_reruns_into_a_fresh_run(tmp_path, capsys):
    assert run_demo(tmp_path, workers=2, settings=QUICK) == 0
    first = capsys.readouterr().out
    for step in range(1, 7):
        assert f"[{step}/6]" in first
    assert "train: found 80 = written 80 + rejected 0" in first
    # Where the small recipes, the demo's and the config's default look for the demo's shards.
    shards = tmp_path / "shards"
    assert (shards / "train.manifest.json").is_file() and (shards / "val-000000.tar").is_file()
    assert "| kNN (k=20) top1 |" in first and "| linear probe top1 |" in first
    run = tmp_path / "runs" / "simclr-001"
    report = json.loads((run / "eval.json").read_text())
    assert set(report["results"]) == {"pretrained", "random"}
    assert (run / "backbone.safetensors").is_file() and (tmp_path / "views.png").is_file()
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if "knn_top1" in r] == [0, 1]  # the online kNN on val

    assert main(["demo", "--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    second = capsys.readouterr().out
    assert "reusing the digits dataset" in second and "already complete" in second
    assert (tmp_path / "runs" / "simclr-002" / "eval.json").is_file()


def test_the_recipes_and_defaults_point_where_the_demo_writes():
    patterns = [DataConfig().train] + [load_config(p).data.train for p in RECIPES.glob("*_small.yaml")]
    demo = load_config(RECIPES / "simclr_demo.yaml")
    patterns += [demo.data.train, demo.eval.val]
    assert patterns and all(p.startswith("demo-out/shards/") for p in patterns), patterns
