"""Benchmark: conversion (and verification) throughput on an ImageNet-like fixture.

    python tools/bench_convert.py [--train-per-class 500] [--workers 1 2] [--repeats 2]

Builds the fixture once (6 classes of ~90 KB real-photo JPEGs plus the ImageNet quirks),
converts its train split with each worker count into a fresh folder, and verifies the result
with DALI's CPU decoder. Prints a table and writes it into docs/benchmarks.md between this
script's markers, with the machine, versions and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing: the repository root holds the package.
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.fixtures.imagenet import build_imagenet_fixture  # noqa: E402
from sslpipe.shards.convert import ConvertOptions, convert_split  # noqa: E402
from sslpipe.shards.imagenet import imagenet_splits  # noqa: E402
from sslpipe.shards.verify import verify_output  # noqa: E402

BEGIN, END = "<!-- bench_convert: begin -->", "<!-- bench_convert: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting; the best is kept")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
        root = Path(tmp) / "imagenet"
        print(f"building the fixture in {root} ...", flush=True)
        build_imagenet_fixture(root, num_classes=6, train_per_class=args.train_per_class,
                               val_per_class=2, progress=True)
        (train,) = imagenet_splits(root, ["train"])
        source_mb = sum(f.path.stat().st_size for f in train.files) / 1e6
        rows = []
        for workers in args.workers:
            convert_s, verify_s = [], []
            for _ in range(args.repeats):
                out = Path(tmp) / "shards"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                result = convert_split(train, out, ConvertOptions(), workers=workers, progress=False)
                convert_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                (report,) = verify_output(out, threads=workers, progress=False)
                verify_s.append(time.perf_counter() - start)
                assert report.ok, report.problems
            written = result.manifest.totals["written"]
            rows.append((workers, train.found, written, min(convert_s), min(verify_s)))
            print(_table(rows, source_mb), flush=True)

    section = _section(rows, source_mb, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _table(rows, source_mb) -> str:
    lines = ["| workers | files found | written | convert s | convert img/s | convert MB/s | verify img/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for workers, found, written, convert_s, verify_s in rows:
        lines.append(f"| {workers} | {found:,} | {written:,} | {convert_s:.2f} | {found / convert_s:,.0f} | "
                     f"{source_mb / convert_s:,.1f} | {written / verify_s:,.0f} |")
    return "\n".join(lines)


def _section(rows, source_mb, args) -> str:
    import nvidia.dali
    import PIL
    from PIL import features

    command = "python tools/bench_convert.py " + shlex.join(
        ["--train-per-class", str(args.train_per_class), "--workers", *map(str, args.workers),
         "--repeats", str(args.repeats)])
    return "\n".join([
        BEGIN,
        "## Conversion throughput (`sslpipe convert`, CPU)",
        "",
        f"Train split of the ImageNet-like fixture: {rows[0][1]:,} files ({source_mb:,.0f} MB of "
        "~90 KB real-photo JPEGs, 6 classes, plus the quirks: CMYK, PNG, grayscale, progressive, "
        "truncated, empty, not-an-image), default options (shards of 1000 samples / 256 MiB). "
        "`convert` reads every file, decodes it fully with Pillow, decodes what it will write again "
        "with DALI's CPU decoder, re-encodes the few that need it, and writes shards + indexes; "
        "`verify` re-reads everything, checks sha256 and decodes every image with DALI's CPU "
        "decoder (threads = workers). Best of "
        f"{args.repeats} runs. With N > 1 workers, N processes are started (spawn, importing "
        "Pillow and DALI: about a second) and share the cores with the main process, which "
        "writes and hashes the shards; on a 2-core machine and a set this small, that caps the "
        "gain of the second worker.",
        "",
        _table(rows, source_mb),
        "",
        f"- Machine: {cpu_name()}, {os.cpu_count()} cores visible; {platform.platform()}",
        f"- Python {platform.python_version()}, Pillow {PIL.__version__} (libjpeg-turbo "
        f"{features.version('libjpeg_turbo')}), DALI {nvidia.dali.__version__}",
        f"- Command: `{command}`",
        END,
    ])


if __name__ == "__main__":
    main()
