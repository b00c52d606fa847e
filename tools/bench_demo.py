"""Benchmark: `sslpipe demo` end to end — its wall time and the pretrained-vs-random comparison.

    python tools/bench_demo.py [--out DIR] [--device cpu] [--fresh] [--cores N]

Runs the demo with its default settings in a fresh folder (or `--out`), then writes the time
and the evaluation table into docs/benchmarks.md between this script's markers, with machine,
versions and command. `--fresh` measures what a new user runs: a clone of this checkout's HEAD
and the README's first command in it, verbatim (the venv install timed apart from the demo;
pip's cache may make the install faster than a first one). `--cores 2 1` runs it once on 2
cores and once on 1 (a slower machine).
"""

from __future__ import annotations

import argparse
import dataclasses
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
EPOCHS_BEGIN, EPOCHS_END = "<!-- bench_demo_epochs: begin -->", "<!-- bench_demo_epochs: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="demo folder (default: a temporary one)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda with a GPU)")
    parser.add_argument("--workers", type=int, default=min(4, len(os.sched_getaffinity(0))))
    parser.add_argument("--fresh", action="store_true", help="clone HEAD and run the README's first command")
    parser.add_argument("--cores", type=int, nargs="+", help="one run on each of these numbers of cores")
    parser.add_argument("--epochs", type=int, nargs="+",
                        help="one run for each of these numbers of pretraining epochs (not with --fresh)")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    if args.fresh and args.epochs:
        parser.error("--fresh runs the README's command as it is: no --epochs")

    available = sorted(os.sched_getaffinity(0))
    runs = []
    for cores in args.cores or [len(available)]:
        for epochs in args.epochs or [None]:
            os.sched_setaffinity(0, available[:cores])  # inherited by everything it starts
            runs.append((cores, *_run(args, epochs)))
    os.sched_setaffinity(0, available)
    section = _section(runs, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, *_markers(args), section)
        print(f"written to {args.doc}")


def _run(args, epochs: int | None) -> tuple[float | None, float, dict]:
    """One demo from scratch: (install minutes or None, demo minutes, its eval report)."""
    with tempfile.TemporaryDirectory(prefix="sslpipe-demo-") as tmp:
        install = None
        start = time.perf_counter()
        if args.fresh:
            install, out = _fresh(Path(tmp))
        else:
            out = args.out or Path(tmp)
            settings = dataclasses.replace(DEFAULT, epochs=epochs)
            if run_demo(out, workers=args.workers, device=args.device, settings=settings) != 0:
                sys.exit("the demo failed")
        minutes = (time.perf_counter() - start) / 60 - (install or 0)
        run = sorted((out / "runs").glob("simclr-*"))[-1]
        report = json.loads((run / "eval.json").read_text())
        report["epochs"] = yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"]
    return install, minutes, report


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


def _markers(args) -> tuple[str, str]:
    """A study of the epochs has a section of its own, beside the timing of the shipped demo."""
    return (EPOCHS_BEGIN, EPOCHS_END) if args.epochs else (BEGIN, END)


def _section(runs: list, args) -> str:
    import nvidia.dali

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    settings = DEFAULT
    command = " ".join(["python tools/bench_demo.py", *map(shlex.quote, sys.argv[1:])])
    what = ("the README's first command in a fresh clone (the install, then the demo)" if args.fresh
            else "`sslpipe demo` from scratch (a fresh folder)")
    report = runs[0][3]
    first = f"{runs[0][0]} cores, {report['epochs']} epochs"
    rows = ["| cores | epochs | install min | demo min | total min | kNN top-1 pretrained / random | "
            "linear top-1 pretrained / random |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for cores, install, minutes, result in runs:
        knn, linear = ([f"{result['results'][b][p]['top1']:.1f}%" for b in ("pretrained", "random")]
                       for p in ("knn", "linear"))
        total = minutes + (install or 0)
        rows.append(f"| {cores} | {result['epochs']} | {f'{install:.1f}' if install is not None else '-'} | "
                    f"{minutes:.1f} | "
                    f"{total:.1f} | {' / '.join(knn)} | {' / '.join(linear)} |")
    begin, end = _markers(args)
    title = ("The demo's length: pretraining epochs against accuracy" if args.epochs
             else "The demo: SimCLR pretraining against random initialisation")
    return "\n".join([
        begin,
        f"## {title}",
        "",
        f"Timed: {what}, once per setting (fewer cores: a slower machine"
        + ("; pip's cache may make the install faster than a first one" if args.fresh else "")
        + "). Digits on photos, "
        f"{settings.train_per_class} train + {settings.val_per_class} val images per digit at "
        f"{settings.size} px; SimCLR ResNet-18 (`recipes/{RECIPE}.yaml`"
        + "".join(f", `{o}`" for o in settings.overrides) + "); evaluated on the val split (held out: other "
        "handwritten bitmaps) with frozen features: weighted kNN (cosine, T=0.07) and a linear probe "
        f"({settings.linear_epochs} epochs). The random backbone is the same ResNet-18, freshly "
        "initialised.",
        "",
        *rows,
        "",
        f"The first run's table ({first}):",
        "",
        results_table(report["results"]),
        "",
        f"- Machine: {cpu_name()}{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `{command}`",
        end,
    ])


if __name__ == "__main__":
    main()
