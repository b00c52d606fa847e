"""Benchmark: the loader's host work per batch and its stall at an epoch boundary (CPU).

    python tools/bench_loader_host.py [--shards 'out/train-*.tar'] [--train-per-class 100]
        [--host-batch 256] [--spec simclr] [--batch-size 64] [--epochs 3] [--repeats 2] [--no-doc]

(a) Host work: the global sample index and the label of every sample of one real DALI batch of
`--host-batch` (sources and `.cls` as DALI gives them), parsed the way the loader does now (DALI
pads both to (B, W) uint8; `SampleIndex.of_sources` and `cls_values` parse the whole batch) and
the way it did before commit 3fd62a5 (a Python loop per sample over the unpadded outputs, copied
below from a2e262b's loader), median of `--host-repeats` calls each, ms per batch.

(b) Epoch boundary: a training loader of `--spec` over `--epochs` epochs, every batch timed as
the training loop sees it (the wait in `next()`); the first batch of each later epoch, and the
slowest batch, against the median of the other batches of those epochs, with the next epoch's
pipeline built ahead (a GPU loader's default) and without (each epoch's pipeline built when the
epoch starts: a CPU loader's default, and every loader's before 3fd62a5). The two take turns
`--repeats` times, a fresh loader each time; medians kept.

Without `--shards`, builds an ImageNet-like fixture of real-photo JPEGs (6 classes x
`--train-per-class`). Writes its section into docs/benchmarks.md between this script's markers.
"""

from __future__ import annotations

import argparse
import gc
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from benchdoc import cpu_name, fixture_shards, mean_jpeg_kb, write_section  # noqa: E402  (tools/)

from sslpipe.pipeline.loader import ViewLoader  # noqa: E402
from sslpipe.pipeline.shardlist import SampleIndex, cls_values, resolve_shards  # noqa: E402

BEGIN, END = "<!-- bench_loader_host: begin -->", "<!-- bench_loader_host: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", help="shard pattern (default: build and convert a fixture)")
    parser.add_argument("--train-per-class", type=int, default=100, help="fixture size (6 classes)")
    parser.add_argument("--host-batch", type=int, default=256, help="batch size of (a)")
    parser.add_argument("--host-repeats", type=int, default=300)
    parser.add_argument("--spec", default="simclr")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size of (b)")
    parser.add_argument("--epochs", type=int, default=3, help="of (b): the first boundary is after epoch 0")
    parser.add_argument("--repeats", type=int, default=2, help="of (b)")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sslpipe-bench-") as tmp:
        pattern = args.shards or fixture_shards(Path(tmp), args.train_per_class)
        host = _host_work(pattern, args)
        print(f"host work per batch of {args.host_batch}: before {host['before']:.2f} ms, "
              f"after {host['after']:.3f} ms", flush=True)
        boundary = _boundaries(pattern, args)
        section = _section(host, boundary, pattern, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


# (a) Host work per batch.

def _host_work(pattern: str, args) -> dict:
    from nvidia.dali import fn, pipeline_def

    shards = resolve_shards(pattern)
    samples = SampleIndex(shards)

    @pipeline_def(batch_size=args.host_batch, num_threads=1, device_id=None, seed=1)
    def sources_and_labels():
        jpegs, labels = fn.readers.webdataset(
            paths=[str(s.path) for s in shards], index_paths=[str(s.index) for s in shards],
            ext=["jpg", "cls"], random_shuffle=True, initial_fill=1024, pad_last_batch=True)
        sources = fn.get_property(jpegs, key="source_info")
        return sources, labels, fn.pad(sources, fill_value=0), fn.pad(labels, fill_value=0)

    pipe = sources_and_labels()
    pipe.build()
    sources, labels, padded_sources, padded_labels = pipe.run()

    def before():
        index = np.array([_before_of_source(samples, np.asarray(sources.at(j)).tobytes().decode())
                          for j in range(len(sources))], dtype=np.int64)
        return index, _before_labels(labels, index)

    def after():  # as `ViewLoader._batch` and `_labels` do
        index = samples.of_sources(np.asarray(padded_sources.as_tensor()))
        values, integer = cls_values(np.asarray(padded_labels.as_tensor()))
        assert integer.all()
        return index, torch.from_numpy(values)

    (index_a, labels_a), (index_b, labels_b) = before(), after()
    assert np.array_equal(index_a, index_b) and torch.equal(labels_a, labels_b), "the two parses differ"
    times = {"before": [], "after": []}
    for _ in range(args.host_repeats):  # taking turns, so that both see the same machine
        for name, parse in (("before", before), ("after", after)):
            start = time.perf_counter()
            parse()
            times[name].append(1000 * (time.perf_counter() - start))
    del pipe
    return {name: statistics.median(t) for name, t in times.items()}


def _before_of_source(samples: SampleIndex, source: str) -> int:
    """`SampleIndex.of_source` as of a2e262b (the loop called it once per sample)."""
    path, offset, member = source.rsplit(":", 2)
    ordinal = samples._ordinal.get(path)
    offsets = samples._offsets[ordinal] if ordinal is not None else None
    position = int(np.searchsorted(offsets, int(offset))) if offsets is not None else -1
    if offsets is None or position >= len(offsets) or offsets[position] != int(offset):
        raise ValueError(f"{path}: DALI read {member} at byte {offset}, which is no sample")
    return int(samples.starts[ordinal]) + position


def _before_labels(labels, index: np.ndarray) -> torch.Tensor:
    """`ViewLoader._labels` as of a2e262b, less its error message."""
    values = []
    for j in range(len(index)):
        text = np.asarray(labels.at(j)).tobytes()
        values.append(int(text))
    return torch.tensor(values, dtype=torch.int64)


# (b) Epoch boundaries.

def _boundaries(pattern: str, args) -> dict:
    runs = {True: [], False: []}
    for repeat in range(args.repeats):
        for ahead in (True, False):
            loader = ViewLoader(args.spec, pattern, args.batch_size, seed=repeat)
            loader._builds_ahead = ahead
            runs[ahead].append(_epochs(loader, args.epochs))
            print(f"  {'ahead' if ahead else 'fresh'} run {repeat}: " + "; ".join(
                " ".join(f"{1000 * t:.0f}" for t in epoch) for epoch in runs[ahead][-1]) + " ms", flush=True)
            del loader
            gc.collect()
    results = {}
    for ahead, measured in runs.items():
        # Epoch 0 starts the process's first pipeline (imports, DALI's start-up): left out.
        steady = [statistics.median(t for epoch in run[1:] for t in epoch[1:]) for run in measured]
        firsts = [[epoch[0] for epoch in run[1:]] for run in measured]
        epochs = [statistics.median(sum(epoch) for epoch in run[1:]) for run in measured]
        results[ahead] = {
            "batches": len(measured[0][0]),
            "steady": statistics.median(steady),
            "first": [statistics.median(f[i] for f in firsts) for i in range(len(firsts[0]))],
            "worst": statistics.median(max(t for epoch in run[1:] for t in epoch) for run in measured),
            "epoch": statistics.median(epochs),
        }
    return results


def _epochs(loader: ViewLoader, epochs: int) -> list[list[float]]:
    """Seconds of each batch of each epoch, as the loop waits for it."""
    times = []
    for _ in range(epochs):
        epoch, start = [], time.perf_counter()
        for _ in loader:
            now = time.perf_counter()
            epoch.append(now - start)
            start = now
        times.append(epoch)
    return times


def _section(host, boundary, pattern, args) -> str:
    import nvidia.dali

    loader_default = ViewLoader.__init__.__kwdefaults__["shuffle_buffer"]
    lines = [
        "## Loader host work per batch and the epoch boundary (CPU)",
        "",
        f"(a) The global sample index and label of each sample of one DALI batch of {args.host_batch}: "
        f"before 3fd62a5 a Python loop per sample (`of_source`, `int()`), now one pass over the batch "
        f"(`of_sources`, `cls_values` on DALI's padded (B, W) bytes); median of {args.host_repeats} calls.",
        "",
        "| batch | before (loop per sample) ms | now (whole batch) ms | speed-up |",
        "|---:|---:|---:|---:|",
        f"| {args.host_batch} | {host['before']:.2f} | {host['after']:.3f} | "
        f"{host['before'] / host['after']:.0f}x |",
        "",
        f"(b) `{args.spec}` at its size, training loader, batches of {args.batch_size} "
        f"({boundary[True]['batches']} per epoch), shuffle buffer {loader_default} (the default), "
        f"{args.epochs} epochs, {args.repeats} runs each (medians). A batch's time is the loop's wait "
        "in `next()` (DALI and the photometric stage). Epoch 0 (the process's first pipeline) left out; "
        "'first' is the first batch of each later epoch.",
        "",
        "| next epoch's pipeline | steady batch ms | first batch ms, epochs "
        f"{', '.join(str(e) for e in range(1, args.epochs))} | first / steady | slowest batch / steady "
        "| epoch s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for ahead, label in ((False, "built when the epoch starts (CPU default)"),
                         (True, "built ahead (GPU default)")):
        r = boundary[ahead]
        firsts = ", ".join(f"{1000 * f:.0f}" for f in r["first"])
        ratios = f"{max(r['first']) / r['steady']:.2f}x | {r['worst'] / r['steady']:.2f}x"
        lines.append(f"| {label} | {1000 * r['steady']:.0f} | {firsts} | {ratios} | {r['epoch']:.2f} |")
    command = " ".join(shlex.quote(a) for a in sys.argv)
    lines += [
        "",
        f"- Fixture: {mean_jpeg_kb(pattern):.0f} KB mean JPEG, {len(SampleIndex(resolve_shards(pattern)))} "
        "images",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores, no GPU; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `python {command}`",
    ]
    return BEGIN + "\n" + "\n".join(lines) + "\n" + END


if __name__ == "__main__":
    main()
