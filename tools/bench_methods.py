"""Benchmark: every method pretrained on the demo's data with one budget, against random init.

    python tools/bench_methods.py [--data DIR] [--epochs 8] [--size 32] [--crop-scale 0.9 1.0]
                                  [--methods simclr byol ...] [--reuse]

Trains each method's small recipe (`recipes/<name>_small.yaml`) and the SimCLR demo recipe (the
row to compare with) on the digits-on-photos shards of `sslpipe demo` (built into `--data` first
when absent) with the same epochs, batch, view size, crop area and seed, evaluates every run on the held-out
val split (weighted kNN and a linear probe on frozen features, beside a randomly initialised
ResNet-18), and writes the table into docs/benchmarks.md between this script's markers, with
machine, versions and command. A method that fails is a row saying so, not the end of the table.
`--reuse` keeps the row of a run whose recipe file, spec and settings are unchanged (its
`bench.json`), so that a changed recipe is measured again without the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import yaml  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.errors import SslpipeError  # noqa: E402
from sslpipe.methods import METHODS  # noqa: E402
from sslpipe.pipeline.spec import load_spec  # noqa: E402
from sslpipe.runs.evaluate import evaluate_run  # noqa: E402
from sslpipe.train.config import load_config  # noqa: E402
from sslpipe.train.loop import train  # noqa: E402
from sslpipe.train.stop import TrainingStopped  # noqa: E402

BEGIN, END = "<!-- bench_methods: begin -->", "<!-- bench_methods: end -->"
DEMO = "simclr_demo"  # the demo's own recipe: the row to compare with
# One optimizer for every method, the demo recipe's (LARS, 0.15 x sqrt(64) = 1.2, one warmup
# epoch), and one initialisation: at the small recipes' own rates (0.03-0.5 at batch 64) no
# method beats a random network in 8 epochs on this data (docs/benchmarks.md, under the table).
SHARED = ["optim.name=lars", "optim.lr=0.15", "optim.lr_scaling=sqrt", "optim.warmup_epochs=1",
          "optim.weight_decay=1.0e-6", "optim.exclude_bias_and_norm=true", "optim.momentum=0.9",
          "optim.eta=0.001", "optim.final_lr_ratio=0.0", "model.zero_init_residual=false"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "demo-out",
                        help="the demo's folder (shards/ in it)")
    parser.add_argument("--out", type=Path, help="where the runs go (default: <data>/bench-methods)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="views rescaled to this size (the data's: 32)")
    parser.add_argument("--batch-size", type=int, default=64)
    # The digits fill most of the demo's images: a crop of 8-20% of the area (the recipes' lower
    # bounds) cuts most of a digit out, and the views then teach an invariance that erases the label.
    parser.add_argument("--crop-scale", type=float, nargs=2, default=(0.9, 1.0), metavar=("LOW", "HIGH"),
                        help="every random crop's area range (default: the demo spec's 0.9-1)")
    parser.add_argument("--linear-epochs", type=int, default=100)
    parser.add_argument("--methods", nargs="+",
                        help="registry names (default: every method with a small recipe)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--own-optim", action="store_true",
                        help="each recipe's own optimizer and initialisation instead of the demo's")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the rows of runs whose recipe, spec and settings are unchanged")
    args = parser.parse_args()

    shards = args.data / "shards"
    if not list(shards.glob("train-*.tar")):
        print(f"no shards in {shards}: building them (sslpipe demo --out {args.data})", flush=True)
        subprocess.run([sys.executable, "-m", "sslpipe", "demo", "--out", str(args.data)], check=True)
    recipes = [DEMO] + [f"{name}_small" for name in args.methods or METHODS
                        if (REPO / "recipes" / f"{name}_small.yaml").is_file()]
    out = args.out or args.data / "bench-methods"
    rows = [_one(recipe, shards, out, args) for recipe in recipes]
    section = _section(rows, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _one(recipe: str, shards: Path, out: Path, args) -> dict:
    """Train and evaluate one recipe: its table row (with "failed" when it did)."""
    overrides = [f"data.train={shards / 'train-*.tar'}", f"data.batch_size={args.batch_size}",
                 f"data.size={args.size}", f"eval.size={args.size}", f"train.epochs={args.epochs}",
                 f"train.out={out}", f"train.run={recipe}", "eval.every_epochs=0", "train.seed=0",
                 *([] if args.own_optim else SHARED)]
    row = {"recipe": recipe}
    try:
        recipe_file = REPO / "recipes" / f"{recipe}.yaml"
        config = load_config(recipe_file, overrides)
        spec_file = _with_crop_scale(config.data.pipeline, tuple(args.crop_scale), out / "specs")
        config = load_config(recipe_file, [*overrides, f"data.pipeline={spec_file}"])
        spec = load_spec(config.data.pipeline, args.size)
        row.update(method=config.method_name, views=spec.describe())
        run = out / recipe
        # What the row depends on: the recipe file, the spec's views, the overrides, the evaluation.
        key = hashlib.sha256(json.dumps([recipe_file.read_text(), spec.fingerprint, overrides,
                                         args.linear_epochs]).encode()).hexdigest()
        saved = run / "bench.json"
        if args.reuse and saved.is_file() and json.loads(saved.read_text())["key"] == key:
            print(f"\n== {recipe}: reusing {saved}", flush=True)
            return json.loads(saved.read_text())["row"]
        if run.exists():  # a fresh run each time: the same budget for every method
            subprocess.run(["rm", "-rf", str(run)], check=True)
        print(f"\n== {recipe}: {args.epochs} epochs", flush=True)
        start = time.perf_counter()
        train(config)
        row["train_min"] = (time.perf_counter() - start) / 60
        report = evaluate_run(run, val=str(shards / "val-*.tar"), linear_epochs=args.linear_epochs,
                              device=args.device)
    except TrainingStopped:  # SIGTERM or Ctrl-C: the benchmark stops, not just this row
        raise
    except (SslpipeError, ValueError, RuntimeError) as e:  # the table says what failed, and goes on
        row["failed"] = str(e).splitlines()[0][:200]
        print(f"{recipe} failed: {e}", file=sys.stderr, flush=True)
        return row
    results = report["results"]
    row.update({f"{protocol}_{backbone}": results[backbone][protocol]["top1"]
                for backbone in ("pretrained", "random") for protocol in ("knn", "linear")})
    row["loss"] = _last_loss(out / recipe)
    saved.write_text(json.dumps({"key": key, "row": row}, indent=1) + "\n")
    return row


def _with_crop_scale(pipeline: str, scale: tuple[float, float], folder: Path) -> Path:
    """The spec `pipeline` with every random crop's area range set to `scale`, written to `folder`."""
    spec = load_spec(pipeline)
    views = [g.to_dict() for g in spec.groups]
    for view in views:
        if view["crop"] == "random":
            view["scale"] = list(scale)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump({"name": spec.name, "views": views}, sort_keys=False))
    return path


def _last_loss(run: Path) -> float | None:
    rows = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    losses = [r["loss"] for r in rows if "loss" in r]
    return losses[-1] if losses else None


def _section(rows: list[dict], args) -> str:
    import nvidia.dali

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    command = " ".join(["python tools/bench_methods.py", *map(shlex.quote, sys.argv[1:])])
    table = ["| method | recipe | views | train min | last loss | kNN top-1 pretrained / random | "
             "linear top-1 pretrained / random |", "|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        row = {**row, "views": row.get("views", "").split("): ", 1)[-1]}  # without the spec's path
        if "failed" in row:
            table.append(f"| {row.get('method', '?')} | `{row['recipe']}` | {row.get('views', '')} | "
                         f"failed: {row['failed']} | | | |")
            continue
        loss = f"{row['loss']:.3f}" if row["loss"] is not None else "-"
        table.append(f"| {row['method']} | `{row['recipe']}` | {row['views']} | {row['train_min']:.1f} | "
                     f"{loss} | {row['knn_pretrained']:.1f}% / {row['knn_random']:.1f}% | "
                     f"{row['linear_pretrained']:.1f}% / {row['linear_random']:.1f}% |")
    return "\n".join([
        BEGIN,
        "## Every method on the demo's data, one budget",
        "",
        f"Each method's small recipe (`recipes/<method>_small.yaml`; SimCLR's demo recipe `{DEMO}` as "
        f"the row to compare with) pretrained on the demo's digits on photos (2,000 train images, 10 "
        f"classes) for {args.epochs} epochs at batch {args.batch_size}, views rescaled to {args.size} px "
        f"(the images' size), every random crop's area in {args.crop_scale[0]:g}-{args.crop_scale[1]:g} "
        f"(the demo spec's: the digits fill most of an image, and a crop of 8-20% of it, the recipes' "
        f"lower bounds, cuts most of a digit out), seed 0, ResNet-18; then evaluated on the held-out val "
        f"split (500 images) with frozen features: weighted kNN (cosine, T=0.07, k=20) and a linear "
        f"probe ({args.linear_epochs} epochs). Random: the recipe's backbone freshly initialised. "
        + ("Each recipe's own optimizer and initialisation. " if args.own_optim else
           f"One optimizer and initialisation for all, the demo recipe's: `{' '.join(SHARED)}`. ")
        + "The recipes' other settings (heads, temperatures, losses, the other augmentations) are "
        "their own: a small-scale comparison of what each learns in a few minutes, not of the "
        "methods at their papers' scale.",
        "",
        *table,
        "",
        f"- Machine: {cpu_name()}{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, DALI {nvidia.dali.__version__}",
        f"- Command: `{command}`",
        END,
    ])


if __name__ == "__main__":
    main()
