"""recipes/accelerate/slurm.sh under stub `srun`, `scontrol` and `accelerate`: the training's
arguments reach every node's launcher exactly as given, with that node's --machine_rank; a
requeued job resumes; the time-limit signal stops the training and requeues the job."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

# srun starts the command once per node, each task with its own SLURM_NODEID (as one task per node does).
SRUN = """#!/bin/bash
for node in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$node "$@" || exit
done
"""
SCONTROL = """#!/bin/bash
[ "$1 $2 $3" = "show hostnames $SLURM_JOB_NODELIST" ] && printf 'node-a\\nnode-b\\n'
"""
ACCELERATE = f"""#!{sys.executable}
import json, os, sys
with open(os.path.join(os.environ["STUB_OUT"], "node" + os.environ["SLURM_NODEID"] + ".json"), "w") as f:
    json.dump(sys.argv[1:], f)
"""

ARGS = ["recipes/x.yaml", "data.train=shards/train-{000000..001281}.tar", "train.run=a b",
        "train.out=$HOME/out*", "--resume"]


def stub(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def launch(tmp_path, args):
    return launch_with(tmp_path, args)


def launch_with(tmp_path, args, **slurm):
    """The script under the stubs; each node's `accelerate` arguments. `slurm`: more of its variables."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("accelerate", ACCELERATE)):
        stub(bin_dir, name, text)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_OUT": str(tmp_path),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]",
           # the batch step's own, as sbatch sets it: each task must read its own
           "SLURM_NODEID": "0", **slurm}
    result = subprocess.run(["bash", "recipes/accelerate/slurm.sh", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads((tmp_path / f"node{n}.json").read_text()) for n in (0, 1)]


def option(argv, name):
    assert argv.count(name) == 1, argv
    return argv[argv.index(name) + 1]


def test_overrides_arrive_exactly_once_each_with_braces_and_spaces_kept(tmp_path):
    for node, argv in enumerate(launch(tmp_path, ARGS)):
        assert argv[0] == "launch"
        assert argv[argv.index("-m"):] == ["-m", "sslpipe.train", *ARGS]
        assert option(argv, "--machine_rank") == str(node)
        assert option(argv, "--num_machines") == "2" and option(argv, "--num_processes") == "16"
        assert option(argv, "--main_process_ip") == "node-a"
        assert option(argv, "--config_file") == "recipes/accelerate/multinode.yaml"


def test_a_recipe_alone_is_passed_on(tmp_path):
    argv = launch(tmp_path, ["recipes/x.yaml"])[1]
    assert argv[argv.index("-m"):] == ["-m", "sslpipe.train", "recipes/x.yaml"]


def test_a_requeued_job_resumes_its_run(tmp_path):
    argv = launch_with(tmp_path, ["recipes/x.yaml", "train.run=a"], SLURM_RESTART_COUNT="1")[0]
    assert argv[argv.index("-m"):] == ["-m", "sslpipe.train", "recipes/x.yaml", "train.run=a", "--resume"]
    argv = launch_with(tmp_path / "again", ["recipes/x.yaml", "--resume"], SLURM_RESTART_COUNT="2")[0]
    assert argv.count("--resume") == 1


# srun that runs until it is sent SIGTERM, as the training does until it has saved.
LONG_SRUN = """#!/bin/bash
trap 'echo TERM > "$STUB_OUT/srun-got"; exit 143' TERM
touch "$STUB_OUT/srun-started"
while true; do sleep 0.1; done
"""
RECORDING_SCONTROL = """#!/bin/bash
if [ "$1" = requeue ]; then echo "$@" > "$STUB_OUT/scontrol-requeue"; exit 0; fi
printf 'node-a\\nnode-b\\n'
"""


def test_the_time_limit_signal_stops_the_training_and_requeues_the_job(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", LONG_SRUN), ("scontrol", RECORDING_SCONTROL)):
        stub(bin_dir, name, text)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "STUB_OUT": str(tmp_path),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_JOB_ID": "4242"}
    script = subprocess.Popen(["bash", "recipes/accelerate/slurm.sh", "recipes/x.yaml"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "srun-started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    script.send_signal(signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@300` sends
    out, err = script.communicate(timeout=30)
    assert script.returncode == 0, err
    assert (tmp_path / "srun-got").read_text().strip() == "TERM"
    assert (tmp_path / "scontrol-requeue").read_text().split() == ["requeue", "4242"]
    assert "requeueing job 4242" in out
