"""`sslpipe demo`: the README's main command, end to end on data that ships with Python packages.

Build a small ImageNet-layout dataset from scikit-image's real photos (with the quirks of the
real ImageNet), convert it to shards, verify them, run one epoch of the SimCLR augmentation
pipeline over them and draw its views, then pretrain a ResNet-18 with SimCLR on them for a few
epochs. Evaluation joins as it lands. Re-running reuses the dataset, the finished shards and
the finished run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tqdm import tqdm

from sslpipe.errors import SslpipeError
from sslpipe.shards.convert import ConvertOptions, convert_split
from sslpipe.shards.imagenet import imagenet_splits
from sslpipe.shards.report import conversion_summary, verify_summary
from sslpipe.shards.verify import verify_output

DATASET = {"num_classes": 5, "train_per_class": 40, "val_per_class": 10}
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "simclr_small.yaml"
PRETRAIN_EPOCHS = 3
SHARD_SAMPLES = 64  # several shards even for this small set, as ImageNet would have


def run_demo(out: Path, workers: int = 2, device: str | None = None) -> int:
    """Build (or reuse) the dataset under `out`, convert, verify and augment it; 0 when all is well.

    `device`: where the pipeline runs (default: the GPU when there is one).
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    dataset, shards = out / "imagenet-like", out / "shards"
    _build_dataset(dataset)

    print(f"\n[2/5] converting {dataset} -> {shards}", flush=True)
    options = ConvertOptions(shard_samples=SHARD_SAMPLES)
    for source in imagenet_splits(dataset, ["train", "val"]):
        result = convert_split(source, shards, options, workers=workers)
        print(conversion_summary(result, shards, workers), flush=True)

    print(f"\n[3/5] verifying {shards} (every image decoded by DALI on the CPU)", flush=True)
    reports = verify_output(shards, threads=workers)
    print(verify_summary(reports), flush=True)
    if not all(r.ok for r in reports):
        print(f"\ndemo FAILED: {shards} did not verify")
        return 1

    print(f"\n[4/5] one epoch of the SimCLR views ({_where_it_runs(device)}), and a picture of them",
          flush=True)
    _augment(shards, out, device, workers)

    print(f"\n[5/5] pretraining: {RECIPE.name} for {PRETRAIN_EPOCHS} epochs on the train shards "
          f"(ResNet-18, 64 px views)", flush=True)
    run_dir = _pretrain(shards, out)
    print(f"\ndemo finished: shards in {shards}; the files the converter refused are listed in "
          f"{shards}/<split>.rejected.jsonl; the pretraining run in {run_dir}")
    return 0


def _pretrain(shards: Path, out: Path) -> Path:
    import json

    from sslpipe.train.config import load_config
    from sslpipe.train.loop import train

    config = load_config(RECIPE, [f"data.train={shards / 'train-*.tar'}", f"train.out={out / 'runs'}",
                                  f"train.epochs={PRETRAIN_EPOCHS}"])
    run_dir = Path(config.train.out) / config.train.run
    resume = "auto" if (run_dir / "checkpoints" / "last.pt").is_file() else None  # a re-run continues
    train(config, resume=resume)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    print(f"loss {first['loss']:.3f} -> {last['loss']:.3f} over {last['step']} steps; embedding std "
          f"{last['embedding_std']:.3f} (collapse: 0, healthy: about {last['embedding_std_ref']:.3f}); "
          f"backbone weights: {run_dir / 'backbone.safetensors'}", flush=True)
    return run_dir


def _augment(shards: Path, out: Path, device: str, threads: int) -> None:
    import time

    from sslpipe.pipeline.loader import ViewLoader
    from sslpipe.pipeline.preview import render_preview

    loader = ViewLoader("simclr", str(shards / "train-*.tar"), batch_size=32, device=device,
                        num_threads=threads)
    start = time.perf_counter()
    batches = sum(1 for _ in tqdm(loader, desc="simclr views", unit="batch", leave=False))
    seconds = time.perf_counter() - start
    views = ", ".join(f"{g.count} x {g.size} px" for g in loader.spec.groups)
    print(f"{batches} batches of 32 images ({views} each) in {seconds:.1f} s: "
          f"{batches * 32 / seconds:.0f} images/s", flush=True)
    picture = render_preview("simclr", str(shards / "train-*.tar"), out / "views-simclr.png", images=4,
                             device=device)
    print(f"the views of 4 images: {picture}", flush=True)


def _where_it_runs(device: str) -> str:
    return "on the GPU" if device.startswith("cuda") else "on the CPU; the same spec runs on a GPU"


def _build_dataset(dataset: Path) -> None:
    try:
        from sslpipe.fixtures.imagenet import build_imagenet_fixture
    except ImportError as e:  # scikit-image is the `demo` extra
        raise SslpipeError(f"sslpipe demo needs scikit-image: pip install 'sslpipe[demo]' ({e})") from e
    if (dataset / "fixture.json").is_file():
        print(f"[1/5] reusing the ImageNet-like dataset in {dataset}", flush=True)
        return
    shutil.rmtree(dataset, ignore_errors=True)  # an interrupted build: start over
    print(f"[1/5] building an ImageNet-like dataset from scikit-image's photos in {dataset}", flush=True)
    build_imagenet_fixture(dataset, layout="classic", progress=True, **DATASET)
