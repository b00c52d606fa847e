"""tools/gpu_check.sh, dry run: every step of the GPU check runs on the CPU at toy sizes (its
pytest step only collects), so that a host with a GPU finds a script whose steps work."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
STEPS = ("env", "tests", "fixture", "pipeline", "train", "counts")


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_the_gpu_check_s_steps_run_in_a_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_DRY_RUN": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", "tools/gpu_check.sh", str(out)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    log = (out / "steps.log").read_text()
    assert result.returncode == 0, log + result.stdout[-3000:]
    for step in STEPS:
        assert f"{step}: exit 0" in log and (out / f"{step}.log").exists(), step
    assert "0 step(s) failed" in log
    doc = (out / "benchmarks.md").read_text()
    for section in ("bench_pipeline", "bench_train", "bench_device_counts"):
        assert f"<!-- {section}: begin -->" in doc and f"<!-- {section}: end -->" in doc
    counts = json.loads((out / "counts.json").read_text())
    assert [row["spec"] for row in counts["photometric"]] == ["simclr", "swav_multicrop"]
    assert len(counts["train"]) == 4 and all(row["sync_count"] <= 1 for row in counts["train"])
    assert "nvidia.dali" in (out / "env.log").read_text()
