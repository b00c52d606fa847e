"""`sslpipe demo`: the README's main command, end to end on data that ships with Python packages.

1. build a labelled dataset: handwritten digits on recoloured photo backgrounds
   (`sslpipe.fixtures.digits`: why this task, and the sources);
2. convert its train and val splits to shards; 3. verify them;
4. draw the SimCLR views of a few images;
5. pretrain a ResNet-18 with SimCLR (`recipes/simclr_demo.yaml`), with the online kNN on val;
6. evaluate the pretrained backbone and a randomly initialised one (weighted kNN and a linear
   probe on val), print the comparison and draw it with the loss curve into `summary.png`.

Re-running reuses the dataset and the finished shards, and trains into a fresh run folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.files import shipped_recipe

RECIPE = "simclr_demo"  # a shipped recipe (recipes/simclr_demo.yaml)


@dataclass(frozen=True)
class DemoSettings:
    train_per_class: int = 200      # digits dataset: images per digit in train, and in val
    val_per_class: int = 50
    size: int = 32                  # pixels: the recipe's views
    epochs: int | None = None       # of SimCLR pretraining (None: the recipe's)
    overrides: tuple[str, ...] = ()  # of the recipe
    linear_epochs: int = 100


DEFAULT = DemoSettings()
# A smoke test of the whole path (CI): a tiny dataset and two epochs; the numbers mean nothing.
QUICK = DemoSettings(train_per_class=8, val_per_class=4, epochs=2,
                     overrides=("data.batch_size=32", "eval.every_epochs=1"), linear_epochs=5)


def run_demo(out: Path, workers: int = 2, device: str | None = None, settings: DemoSettings = DEFAULT) -> int:
    """Run the six steps under `out`; 0 when all went well. `device`: default the GPU when there is one."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    # The paths the *_small recipes and the config's default name: demo-out/shards/train-*.tar.
    dataset, shards = out / "digits", out / "shards"
    if _build_dataset(dataset, settings):
        shutil.rmtree(shards, ignore_errors=True)  # shards of the previous dataset

    print(f"\n[2/6] converting {dataset} -> {shards}", flush=True)
    _convert(dataset, shards, workers)

    print(f"\n[3/6] verifying {shards} (every image decoded by DALI on the CPU)", flush=True)
    from sslpipe.shards.report import verify_summary
    from sslpipe.shards.verify import verify_output

    reports = verify_output(shards, threads=workers)
    print(verify_summary(reports), flush=True)
    if not all(r.ok for r in reports):
        print(f"\ndemo FAILED: {shards} did not verify")
        return 1

    from sslpipe.pipeline.preview import render_preview

    config = _pretraining_config(shards, out, settings)
    spec = config.data.pipeline
    picture = render_preview(spec, str(shards / "train-*.tar"), out / "views.png", images=4, device=device)
    print(f"\n[4/6] the {spec} views of 4 images ({_where(device)}): {picture}", flush=True)

    print(f"\n[5/6] pretraining: SimCLR, ResNet-18, {config.train.epochs} epochs ({_where(device)}), "
          f"into {Path(config.train.out) / config.train.run}", flush=True)
    from sslpipe.train.loop import train

    run_dir = train(config)

    print(f"\n[6/6] evaluating the pretrained backbone against a random one on {shards}/val-*", flush=True)
    from sslpipe.runs.evaluate import evaluate_run, results_table
    from sslpipe.runs.plot import plot_run

    report = evaluate_run(run_dir, val=str(shards / "val-*.tar"), linear_epochs=settings.linear_epochs,
                          device=device)
    print(results_table(report["results"]), flush=True)
    summary = plot_run(run_dir, report["results"], out / "summary.png")
    print(f"\ndemo finished: the run in {run_dir} (metrics.jsonl, eval.json, backbone.safetensors); "
          f"loss curve and comparison in {summary}")
    return 0


def _build_dataset(dataset: Path, settings: DemoSettings) -> bool:
    """Build the digits dataset unless `dataset` holds one of these settings; whether it built one."""
    try:
        from sslpipe.fixtures.digits import build_digits_dataset
    except ImportError as e:  # scikit-learn and scikit-image are the `demo` extra
        raise SslpipeError(f"sslpipe demo needs the demo extra: pip install 'sslpipe[demo]' ({e})") from e
    arguments = {"train_per_class": settings.train_per_class, "val_per_class": settings.val_per_class,
                 "size": settings.size}
    described = dataset / "dataset.json"
    if described.is_file() and all(json.loads(described.read_text()).get(k) == v
                                    for k, v in arguments.items()):
        print(f"[1/6] reusing the digits dataset in {dataset}", flush=True)
        return False
    shutil.rmtree(dataset, ignore_errors=True)  # an interrupted build, or other settings: start over
    print(f"[1/6] building the digits dataset in {dataset}: handwritten digits (scikit-learn) on "
          f"photo backgrounds (scikit-image), {settings.train_per_class} + {settings.val_per_class} "
          f"images per digit", flush=True)
    build_digits_dataset(dataset, progress=True, **arguments)
    return True


def _convert(dataset: Path, shards: Path, workers: int) -> None:
    from sslpipe.shards import ConvertOptions, convert_split, folder_split
    from sslpipe.shards.report import conversion_summary

    for split in ("train", "val"):
        source = folder_split(dataset / split, split)
        result = convert_split(source, shards, ConvertOptions(shard_samples=500), workers=workers)
        print(conversion_summary(result, shards, workers), flush=True)


def _pretraining_config(shards: Path, out: Path, settings: DemoSettings):
    from sslpipe.train.config import load_config

    runs = out / "runs"
    number = 1 + max((int(p.name.rsplit("-", 1)[1]) for p in runs.glob("simclr-*")
                      if p.name.rsplit("-", 1)[1].isdigit()), default=0)
    return load_config(shipped_recipe(RECIPE), [f"data.train={shards / 'train-*.tar'}", f"train.out={runs}",
                                f"train.run=simclr-{number:03d}",
                                *([f"train.epochs={settings.epochs}"] if settings.epochs else []),
                                f"eval.val={shards / 'val-*.tar'}", *settings.overrides])


def _where(device: str) -> str:
    return "on the GPU" if device.startswith("cuda") else "on the CPU; the same runs on a GPU"
