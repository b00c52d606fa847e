"""Benchmark: `sslpipe demo` end to end — its wall time and the pretrained-vs-random comparison.

    python tools/bench_demo.py [--out DIR] [--device cpu] [--fresh] [--cores N]

Runs the demo with its default settings in a fresh folder (or `--out`), then writes the time
and the evaluation table into docs/benchmarks.md between this script's markers, with machine,
versions and command. `--fresh` measures what a new user runs: a clone of this checkout's HEAD
and the README's first command in it, verbatim (the venv install timed apart from the demo;
pip's cache may make the install faster than a first one). `--cores N` keeps everything on N
cores, a slower machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.demo import DEFAULT, RECIPE, run_demo  # noqa: E402
from sslpipe.runs.evaluate import results_table  # noqa: E402

BEGIN, END = "<!-- bench_demo: begin -->", "<!-- bench_demo: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="demo folder (default: a temporary one)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda with a GPU)")
    parser.add_argument("--workers", type=int, default=min(4, len(os.sched_getaffinity(0))))
    parser.add_argument("--fresh", action="store_true", help="clone HEAD and run the README's first command")
    parser.add_argument("--cores", type=int, help="run on this many cores only")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.cores])  # inherited by what it starts

    with tempfile.TemporaryDirectory(prefix="sslpipe-demo-") as tmp:
        install = None
        start = time.perf_counter()
        if args.fresh:
            install, out = _fresh(Path(tmp))
        else:
            out = args.out or Path(tmp)
            if run_demo(out, workers=args.workers, device=args.device) != 0:
                sys.exit("the demo failed")
        minutes = (time.perf_counter() - start) / 60 - (install or 0)
        run = sorted((out / "runs").glob("simclr-*"))[-1]
        report = json.loads((run / "eval.json").read_text())
        report["epochs"] = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    section = _section(report, minutes, install, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _fresh(tmp: Path) -> tuple[float, Path]:
    """Clone HEAD into `tmp`, run the README's first command there: (install minutes, demo-out)."""
    clone = tmp / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    readme = (clone / "README.md").read_text()
    command = re.search(r"```bash\n(python3 -m venv [^\n]*sslpipe demo)\n```", readme).group(1)
    setup, demo = command.rsplit(" && ", 1)  # the install, then `.venv/bin/sslpipe demo`
    print(f"in {clone}:\n  {setup}\n  {demo}", flush=True)
    start = time.perf_counter()
    subprocess.run(["bash", "-c", setup], cwd=clone, check=True, stdout=subprocess.DEVNULL)
    install = (time.perf_counter() - start) / 60
    subprocess.run(["bash", "-c", demo], cwd=clone, check=True)
    return install, clone / "demo-out"


def _section(report: dict, minutes: float, install: float | None, args) -> str:
    import nvidia.dali

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    settings = DEFAULT
    command = " ".join(["python tools/bench_demo.py", *map(shlex.quote, sys.argv[1:])])
    cores = len(os.sched_getaffinity(0))
    timing = (f"The README's first command in a fresh clone: the install took {install:.1f} minutes, the demo "
              f"{minutes:.1f}, {install + minutes:.1f} in all" if install is not None
              else f"`sslpipe demo` from scratch (a fresh folder): {minutes:.1f} minutes in all")
    return "\n".join([
        BEGIN,
        "## The demo: SimCLR pretraining against random initialisation",
        "",
        f"{timing}, on {cores} core{'s' * (cores != 1)}. Digits on photos, "
        f"{settings.train_per_class} train + {settings.val_per_class} val images per digit at "
        f"{settings.size} px; SimCLR ResNet-18 for {report['epochs']} epochs (`recipes/{RECIPE}.yaml`"
        + "".join(f", `{o}`" for o in settings.overrides) + "); evaluated on the val split (held out: other "
        "handwritten bitmaps) with frozen features: weighted kNN (cosine, T=0.07) and a linear probe "
        f"({settings.linear_epochs} epochs). The random backbone is the same ResNet-18, freshly "
        "initialised.",
        "",
        results_table(report["results"]),
        "",
        f"- Machine: {cpu_name()}, {cores} cores used{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `{command}`" + ("" if args.fresh else " (the same as `sslpipe demo`, timed)"),
        END,
    ])


if __name__ == "__main__":
    main()
