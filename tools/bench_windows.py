"""Benchmark: what returning the crop windows costs (`ViewLoader(windows=True)`).

    python tools/bench_windows.py [--shards 'out/train-*.tar'] [--specs simclr swav_multicrop]

With `windows=True` a random crop is drawn by DALI's `random_crop_generator` and cut out by
`resize` (or `decoders.image_slice` for ROI decoding), so the window can be returned; without,
by the fused `random_resized_crop` (`decoders.image_random_crop`). Both loaders run the same
spec on the same shards, taking turns `--repeats` times (median kept), on the CPU; also the
process CPU time per source image, less sensitive to the machine's load than wall time.
Writes its table into docs/benchmarks.md between this script's markers.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchdoc import cpu_name, endless, fixture_shards, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.pipeline.loader import ViewLoader  # noqa: E402

BEGIN, END = "<!-- bench_windows: begin -->", "<!-- bench_windows: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard pattern (default: build and convert a fixture)")
    parser.add_argument("--train-per-class", type=int, default=100, help="fixture size (6 classes)")
    parser.add_argument("--specs", nargs="+", default=["simclr", "swav_multicrop"])
    parser.add_argument("--decode", nargs="+", default=["once", "roi"], choices=["once", "roi"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="DALI CPU threads")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
        pattern = args.shards or fixture_shards(Path(tmp), args.train_per_class)
        rows = []
        for spec in args.specs:
            for decode in args.decode:
                streams = {
                    windows: endless(
                        ViewLoader(
                            spec,
                            pattern,
                            args.batch_size,
                            decode=decode,
                            num_threads=args.threads,
                            windows=windows,
                        )
                    )
                    for windows in (False, True)
                }
                measured = {windows: [] for windows in streams}
                for _ in range(args.repeats):
                    for windows, stream in streams.items():
                        measured[windows].append(_measure(stream, args))
                rows.append(
                    (
                        spec,
                        decode,
                        {
                            w: tuple(statistics.median(m[i] for m in runs) for i in range(2))
                            for w, runs in measured.items()
                        },
                    )
                )
    section = _section(rows, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _measure(stream, args) -> tuple[float, float]:
    """(source images/s, process CPU ms per source image) over `args.batches` batches."""
    for _ in range(args.warmup):
        next(stream)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.batches):
        next(stream)
    images = args.batches * args.batch_size
    return images / (time.perf_counter() - wall), 1000 * (time.process_time() - cpu) / images


def _section(rows, args) -> str:
    import nvidia.dali

    lines = [
        "## Crop windows: `windows=True` against the fused crop (CPU)",
        "",
        f"Batches of {args.batch_size}, {args.batches} timed after {args.warmup}, the two loaders taking "
        f"turns {args.repeats} times (median). Images/s counts source images; CPU ms is the process's CPU "
        "time (all threads: DALI's and the photometric stage's) per source image.",
        "",
        "| spec | decode | fused img/s | windows img/s | fused CPU ms/img | windows CPU ms/img "
        "| windows / fused (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for spec, decode, values in rows:
        (rate, cpu), (rate_w, cpu_w) = values[False], values[True]
        cells = [spec, decode, f"{rate:.0f}", f"{rate_w:.0f}", f"{cpu:.2f}", f"{cpu_w:.2f}",
                 f"{cpu_w / cpu:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    lines += [
        "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, no GPU; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `python {command}`",
    ]
    return BEGIN + "\n" + "\n".join(lines) + "\n" + END


if __name__ == "__main__":
    main()
