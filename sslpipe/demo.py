"""`sslpipe demo`: the README's main command, end to end on data that ships with Python packages.

For now it covers what exists: build a small ImageNet-layout dataset from scikit-image's real
photos (with the quirks of the real ImageNet), convert it to shards, verify them. Pretraining
and evaluation join as they land. Re-running reuses the dataset and the finished shards.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.shards.convert import ConvertOptions, convert_split
from sslpipe.shards.imagenet import imagenet_splits
from sslpipe.shards.report import conversion_summary, verify_summary
from sslpipe.shards.verify import verify_output

DATASET = {"num_classes": 5, "train_per_class": 40, "val_per_class": 10}
SHARD_SAMPLES = 64  # several shards even for this small set, as ImageNet would have


def run_demo(out: Path, workers: int = 2) -> int:
    """Build (or reuse) the dataset under `out`, convert and verify it; 0 when all is well."""
    out = Path(out)
    dataset, shards = out / "imagenet-like", out / "shards"
    _build_dataset(dataset)

    print(f"\n[2/3] converting {dataset} -> {shards}", flush=True)
    options = ConvertOptions(shard_samples=SHARD_SAMPLES)
    for source in imagenet_splits(dataset, ["train", "val"]):
        result = convert_split(source, shards, options, workers=workers)
        print(conversion_summary(result, shards, workers), flush=True)

    print(f"\n[3/3] verifying {shards} (every image decoded by DALI on the CPU)", flush=True)
    reports = verify_output(shards, threads=workers)
    print(verify_summary(reports), flush=True)
    ok = all(r.ok for r in reports)
    print(f"\ndemo {'finished' if ok else 'FAILED'}: shards in {shards}; the files the converter "
          f"refused are listed in {shards}/<split>.rejected.jsonl")
    return 0 if ok else 1


def _build_dataset(dataset: Path) -> None:
    try:
        from sslpipe.fixtures.imagenet import build_imagenet_fixture
    except ImportError as e:  # scikit-image is the `demo` extra
        raise SslpipeError(f"sslpipe demo needs scikit-image: pip install 'sslpipe[demo]' ({e})") from e
    if (dataset / "fixture.json").is_file():
        print(f"[1/3] reusing the ImageNet-like dataset in {dataset}", flush=True)
        return
    shutil.rmtree(dataset, ignore_errors=True)  # an interrupted build: start over
    print(f"[1/3] building an ImageNet-like dataset from scikit-image's photos in {dataset}", flush=True)
    build_imagenet_fixture(dataset, layout="classic", progress=True, **DATASET)
