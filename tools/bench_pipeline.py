"""Benchmark: source images/s of the augmentation pipeline for each shipped spec, against the
standard per-sample PIL (or torchvision) DataLoader on the same shards.

    python tools/bench_pipeline.py [--shards 'out/train-*.tar'] [--device cpu cuda] [--batch-size 64]
        [--images N | --train-per-class N] [--jpeg-quality 94]

Without `--shards`, builds an ImageNet-like fixture of real-photo baseline JPEGs and converts it:
`--images` of them (default: max(600, 8 x batch size), so that an epoch holds at least 8
batches and a loader rebuilds its DALI pipeline, once per epoch, no more often than every 8
batches), of `--jpeg-quality` (90: ~90 KB; 94: ~110 KB, ImageNet's mean).
Each measurement runs `--batches` batches after `--warmup` batches (worker and pipeline start-up
excluded) and counts source images (one image gives all the views of its spec); the loaders take
turns `--repeats` times and each one's median is kept. Prints a table
and writes it into docs/benchmarks.md between this script's markers, with machine and versions.
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
from benchdoc import (  # noqa: E402  (tools/, beside this script)
    cpu_name,
    endless,
    fixture_shards,
    mean_jpeg_kb,
    write_section,
)
from pil_baseline import baseline_loader, torchvision_available  # noqa: E402

from sslpipe.pipeline.loader import ViewLoader  # noqa: E402
from sslpipe.pipeline.spec import load_spec  # noqa: E402

BEGIN, END = "<!-- bench_pipeline: begin -->", "<!-- bench_pipeline: end -->"
SPECS = ["simclr", "mocov2", "byol", "swav_multicrop", "eval"]
CLASSES = 6  # of the fixture
MIN_BATCHES = 8  # per epoch, in the default fixture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard pattern (default: build and convert a fixture)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--images", type=int,
                      help=f"fixture images (default: max(600, {MIN_BATCHES} x batch size), rounded up to "
                           f"{CLASSES} classes)")
    size.add_argument("--train-per-class", type=int, help=f"fixture images per class ({CLASSES} classes)")
    parser.add_argument("--jpeg-quality", type=int, default=90,
                        help="fixture JPEG quality (90: ~90 KB; 94: ~110 KB, ImageNet's mean)")
    parser.add_argument("--specs", nargs="+", default=SPECS)
    parser.add_argument("--device", nargs="+",
                        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--decode", nargs="+", default=["once"], choices=["once", "roi"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4, help="batches before each timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs (median kept)")
    parser.add_argument("--threads", type=int,
                        help="DALI CPU threads (default: the loader's: the cores, at most 8 on a GPU)")
    parser.add_argument("--baseline-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    if args.train_per_class is None:
        images = args.images or max(600, MIN_BATCHES * args.batch_size)
        args.train_per_class = -(-images // CLASSES)

    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
        pattern = args.shards or fixture_shards(Path(tmp), args.train_per_class, args.jpeg_quality)
        args.jpeg_kb = mean_jpeg_kb(pattern)
        rows = []
        for name in args.specs:
            spec = load_spec(name)
            streams = {}
            for device in args.device:
                for decode in args.decode:
                    loader = ViewLoader(spec, pattern, args.batch_size, device=device, decode=decode,
                                        num_threads=args.threads, train=name != "eval")
                    if len(loader) < MIN_BATCHES:
                        print(f"note: {name} {device}: {len(loader)} batches per epoch; each epoch builds a "
                              f"new DALI pipeline (more images: --images)", flush=True)
                    streams[f"{device} {decode}"] = endless(loader)
            if not args.no_baseline:
                baseline = baseline_loader(spec, pattern, args.batch_size, args.baseline_workers,
                                           torchvision_available())
                streams["baseline"] = endless(baseline)
            # Interleaved rounds, each loader's median kept: on a shared machine the speed drifts.
            rates = {column: [] for column in streams}
            for _ in range(args.repeats):
                for column, stream in streams.items():
                    rates[column].append(_throughput(stream, args, column.split()[0]))
            row = {"spec": name, "views": " + ".join(f"{g.count}x{g.size}" for g in spec.groups)}
            row.update({column: statistics.median(values) for column, values in rates.items()})
            rows.append(row)
            del streams
            print(_table(rows, args), flush=True)

    section = _section(rows, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _throughput(stream, args, device: str) -> float:
    """Source images per second over `args.batches` batches, after `args.warmup` (which also take
    what the loader prefetched while the others ran), across epochs."""
    for _ in range(args.warmup):
        next(stream)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.batches):
        next(stream)
    if device == "cuda":
        torch.cuda.synchronize()
    return args.batches * args.batch_size / (time.perf_counter() - start)


def _columns(rows):
    return [c for c in rows[0] if c not in ("spec", "views")]


def _table(rows, args) -> str:
    columns = _columns(rows)
    names = {"baseline": f"baseline, {args.baseline_workers} workers"}
    header = ["spec", "views"] + [f"{names.get(c, 'sslpipe ' + c)} img/s" for c in columns]
    if "baseline" in columns:
        header += [f"{c} / baseline" for c in columns if c != "baseline"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in rows:
        cells = [row["spec"], row["views"]] + [f"{row[c]:,.0f}" for c in columns]
        if "baseline" in columns:
            cells += [f"{row[c] / row['baseline']:.2f}x" for c in columns if c != "baseline"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _section(rows, args) -> str:
    import nvidia.dali
    import PIL

    baseline = ("torchvision.transforms" if torchvision_available()
                else "PIL operations written as torchvision's PIL path does them "
                     "(torchvision does not import here)")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    threads = f"{args.threads} threads" if args.threads else "the loader's default threads"
    command = "python tools/bench_pipeline.py " + shlex.join(
        [*(["--shards", args.shards] if args.shards else ["--train-per-class", str(args.train_per_class),
                                                           "--jpeg-quality", str(args.jpeg_quality)]),
         "--device", *args.device, "--decode", *args.decode, "--batch-size", str(args.batch_size),
         "--batches", str(args.batches), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
         *(["--threads", str(args.threads)] if args.threads else []),
         "--baseline-workers", str(args.baseline_workers)])
    return "\n".join([
        BEGIN,
        "## Pipeline throughput (source images/s)",
        "",
        f"Batches of {args.batch_size} source images, {args.batches} timed after {args.warmup} warm-up "
        f"batches, the loaders taking turns {args.repeats} times (median shown); every image gives all "
        "of its spec's views (SwAV: 8). sslpipe: DALI reads, decodes and "
        f"crops ({threads}; `once`: one decode per image, `roi`: one region decode per view), then "
        "the photometric stage augments the batch (torch ops on CPU tensors for `cpu`). "
        f"Baseline: a DataLoader with {args.baseline_workers} worker processes reading the same shards "
        f"with webdataset, decoding with PIL and augmenting each sample with {baseline}. Shards: "
        + (f"ImageNet-like fixture of {CLASSES * args.train_per_class} real-photo baseline JPEGs"
           if not args.shards else f"`{args.shards}`")
        + f" (mean JPEG {args.jpeg_kb:.0f} KB)."
        + " The baseline's blur is PIL's box-filter approximation of a Gaussian; sslpipe convolves "
        "with the exact Gaussian kernel of the spec (23 taps at 224 px), as torchvision's tensor "
        "blur does.",
        "",
        _table(rows, args),
        "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}, "
        f"Pillow {PIL.__version__}",
        f"- Command: `{command}`",
        END,
    ])


if __name__ == "__main__":
    main()
