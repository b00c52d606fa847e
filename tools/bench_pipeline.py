"""Benchmark: source images/s of the augmentation pipeline for each shipped spec, against the
standard per-sample PIL (or torchvision) DataLoader on the same shards.

    python tools/bench_pipeline.py [--shards 'out/train-*.tar'] [--device cpu cuda] [--batch-size 64]

Without `--shards`, builds an ImageNet-like fixture (~90 KB real-photo JPEGs) and converts it.
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
from benchdoc import cpu_name, endless, fixture_shards, write_section  # noqa: E402  (tools/, beside this script)
from pil_baseline import baseline_loader, torchvision_available  # noqa: E402

from sslpipe.pipeline.loader import ViewLoader  # noqa: E402
from sslpipe.pipeline.spec import load_spec  # noqa: E402

BEGIN, END = "<!-- bench_pipeline: begin -->", "<!-- bench_pipeline: end -->"
SPECS = ["simclr", "mocov2", "byol", "swav_multicrop", "eval"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard pattern (default: build and convert a fixture)")
    parser.add_argument("--train-per-class", type=int, default=100, help="fixture size (6 classes)")
    parser.add_argument("--specs", nargs="+", default=SPECS)
    parser.add_argument("--device", nargs="+",
                        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    parser.add_argument("--decode", nargs="+", default=["once"], choices=["once", "roi"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=4, help="batches before each timed run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed runs (median kept)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="DALI CPU threads")
    parser.add_argument("--baseline-workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
        pattern = args.shards or fixture_shards(Path(tmp), args.train_per_class)
        rows = []
        for name in args.specs:
            spec = load_spec(name)
            streams = {}
            for device in args.device:
                for decode in args.decode:
                    streams[f"{device} {decode}"] = endless(ViewLoader(
                        spec, pattern, args.batch_size, device=device, decode=decode,
                        num_threads=args.threads, train=name != "eval"))
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
    command = "python tools/bench_pipeline.py " + shlex.join(
        [*(["--shards", args.shards] if args.shards else ["--train-per-class", str(args.train_per_class)]),
         "--device", *args.device, "--decode", *args.decode, "--batch-size", str(args.batch_size),
         "--batches", str(args.batches), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
         "--threads", str(args.threads),
         "--baseline-workers", str(args.baseline_workers)])
    return "\n".join([
        BEGIN,
        "## Pipeline throughput (source images/s)",
        "",
        f"Batches of {args.batch_size} source images, {args.batches} timed after {args.warmup} warm-up "
        f"batches, the loaders taking turns {args.repeats} times (median shown); every image gives all "
        "of its spec's views (SwAV: 8). sslpipe: DALI reads, decodes and "
        f"crops ({args.threads} threads; `once`: one decode per image, `roi`: one region decode per "
        "view), then the photometric stage augments the batch (torch ops on CPU tensors for `cpu`). "
        f"Baseline: a DataLoader with {args.baseline_workers} worker processes reading the same shards "
        f"with webdataset, decoding with PIL and augmenting each sample with {baseline}. Shards: "
        + ("ImageNet-like fixture of ~90 KB real-photo JPEGs." if not args.shards else f"`{args.shards}`.")
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
