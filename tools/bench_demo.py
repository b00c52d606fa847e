"""Benchmark: `sslpipe demo` end to end — its wall time and the pretrained-vs-random comparison.

    python tools/bench_demo.py [--out DIR] [--device cpu]

Runs the demo with its default settings in a fresh folder (or `--out`), then writes the time
and the evaluation table into docs/benchmarks.md between this script's markers, with machine,
versions and command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.demo import DEFAULT, RECIPE, run_demo  # noqa: E402
from sslpipe.runs.evaluate import results_table  # noqa: E402

BEGIN, END = "<!-- bench_demo: begin -->", "<!-- bench_demo: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="demo folder (default: a temporary one)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda with a GPU)")
    parser.add_argument("--workers", type=int, default=min(4, len(os.sched_getaffinity(0))))
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sslpipe-demo-") as tmp:
        out = args.out or Path(tmp)
        start = time.perf_counter()
        if run_demo(out, workers=args.workers, device=args.device) != 0:
            sys.exit("the demo failed")
        minutes = (time.perf_counter() - start) / 60
        run = sorted((out / "runs").glob("simclr-*"))[-1]
        report = json.loads((run / "eval.json").read_text())
    section = _section(report, minutes, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _section(report: dict, minutes: float, args) -> str:
    import nvidia.dali

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    settings = DEFAULT
    command = "python tools/bench_demo.py" + (f" --device {shlex.quote(args.device)}" if args.device else "")
    return "\n".join([
        BEGIN,
        "## The demo: SimCLR pretraining against random initialisation",
        "",
        f"`sslpipe demo` from scratch (a fresh folder): {minutes:.1f} minutes in all. Digits on photos, "
        f"{settings.train_per_class} train + {settings.val_per_class} val images per digit at "
        f"{settings.size} px; SimCLR ResNet-18 for {settings.epochs} epochs (`recipes/{RECIPE.name}`"
        + "".join(f", `{o}`" for o in settings.overrides) + "); evaluated on the val split (held out: other "
        "handwritten bitmaps) with frozen features: weighted kNN (cosine, T=0.07) and a linear probe "
        f"({settings.linear_epochs} epochs). The random backbone is the same ResNet-18, freshly "
        "initialised.",
        "",
        results_table(report["results"]),
        "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `{command}` (the same as `sslpipe demo`, timed)",
        END,
    ])


if __name__ == "__main__":
    main()
