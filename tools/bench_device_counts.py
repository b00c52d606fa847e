"""Benchmark by counts: what the device path asks of a GPU, counted where no GPU is needed.

    python tools/bench_device_counts.py                      # photometric stage and training steps
    python tools/bench_device_counts.py --part photometric --batch 256 --json counts.json --no-doc

Timings on a 2-core machine say little about a GPU; these counts do not depend on the machine:

- *photometric*: the stage of SimCLR's and SwAV's specs with its device strategy ("select") on
  `--device` tensors, at `--batch` images per view. Eager: kernels dispatched and the bytes they
  read and write (`sslpipe.counting.DispatchCounter`). Compiled (`torch.compile`, the CUDA
  default): inductor's generated-kernel count and the bytes its kernels name
  (`sslpipe.counting.compiled_counts` states the estimate), the first call's compile time, and the
  largest difference from eager.
- *train*: one training step of each method's ResNet-50 recipe (the loop's own `train_step`, on a
  batch the recipe's pipeline makes at `--train-batch` images), counted after a first step: host
  synchronisations by kind, kernels, and the optimizer's estimated CUDA launches. One process
  (MoCo v2 with split-BN keys instead of its recipe's shuffle-BN, which needs several).

Writes the tables into docs/benchmarks.md between this script's markers, with machine and versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.counting import DispatchCounter, compiled_counts  # noqa: E402
from sslpipe.pipeline.loader import _size_groups  # noqa: E402
from sslpipe.pipeline.photometric import PhotometricStage  # noqa: E402
from sslpipe.pipeline.spec import load_spec  # noqa: E402

BEGIN, END = "<!-- bench_device_counts: begin -->", "<!-- bench_device_counts: end -->"
SPECS = ("simclr", "swav_multicrop")
RECIPES = ("simclr_r50_imagenet", "mocov2_r50_imagenet", "swav_r50_imagenet", "simsiam_r50_imagenet")
GB = 1e9


def photometric_counts(spec_name: str, batch: int, device: torch.device, compile: bool) -> dict:
    """Eager and compiled counts of one spec's photometric stages (every size group), summed."""
    spec = load_spec(spec_name)
    row = {"spec": spec_name, "batch": batch, "views": [], "eager_kernels": 0, "eager_bytes": 0}
    if compile:
        row.update(compiled_kernels=0, compiled_bytes=0, compile_s=0.0, max_difference=0.0)
    for size, members in _size_groups(spec):
        views = [spec.views[i] for i in members]
        row["views"].append(f"{len(views)}x{size}")
        images = torch.randint(0, 256, (len(views) * batch, 3, size, size), dtype=torch.uint8, device=device)
        stage = PhotometricStage(views, batch, device, strategy="select")
        draws = stage.sample(seed=1)
        eager = stage.apply(images, draws)
        with DispatchCounter(roots=[images]) as counted, _torch_syncs(device) as torch_syncs:
            stage.apply(images, draws)
        if torch_syncs.count is not None:
            row["torch_sync_warnings"] = row.get("torch_sync_warnings", 0) + torch_syncs.count
        row["eager_kernels"] += counted.kernels
        row["eager_bytes"] += counted.bytes
        if compile:
            compiled_stage = PhotometricStage(views, batch, device, strategy="select", compile=True)
            torch._dynamo.reset()
            out, counts = compiled_counts(compiled_stage._compiled, images, draws.ops)
            row["compiled_kernels"] += counts.kernels
            row["compiled_bytes"] += counts.bytes
            row["compile_s"] += counts.compile_s
            difference = float((out.float() - eager.float()).abs().max())
            row["max_difference"] = max(row["max_difference"], difference)
        del images, eager
    return row


class _torch_syncs:
    """On CUDA with --sync-debug: the synchronising calls torch itself reports inside the block
    (`torch.cuda.set_sync_debug_mode("warn")`), in `count`; elsewhere None is counted."""

    enabled = False

    def __init__(self, device: torch.device):
        self.on = self.enabled and device.type == "cuda"
        self.count = None

    def __enter__(self):
        if self.on:
            torch.cuda.synchronize()
            self._caught = warnings.catch_warnings(record=True)
            self._records = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.on:
            torch.cuda.set_sync_debug_mode(0)
            self._caught.__exit__(*exc)
            self.count = sum("synchroniz" in str(w.message) for w in self._records)


def train_step_counts(recipe: Path, batch: int, device: torch.device) -> dict:
    """Host syncs, kernels and optimizer launches of one step of `recipe` (its backbone, method,
    optimizer and views at their sizes), counted on its third step (the first two create the
    optimizer's momentum buffers)."""
    from sslpipe.pipeline.batch import Batch
    from sslpipe.train import loop
    from sslpipe.train.checkpoint import Progress
    from sslpipe.train.config import load_config

    # One process: MoCo's shuffle-BN needs several, so its keys' BN is split-BN here.
    one_process = ["method.key_bn=split", "method.bn_splits=2"] if "moco" in recipe.name else []
    config = load_config(recipe, [f"data.batch_size={batch}", "train.epochs=1", *one_process])
    spec = load_spec(config.data.pipeline)
    accelerator = loop._accelerator(config)
    torch.manual_seed(0)
    method = loop.build_method(config).to(device)
    schedules = loop.build_schedules(config, method, 10, 10)
    optimizer = loop.build_optimizer(config, method, schedules.peak_lr)
    model, optimizer = accelerator.prepare(method, optimizer)
    state = loop.TrainState(accelerator, model, method, optimizer, None, schedules, config, None, None, None,
                            Progress(), steps_per_epoch=10)
    generator = torch.Generator().manual_seed(0)
    views = [torch.randn(batch, 3, v.size, v.size, generator=generator).to(device) for v in spec.views]
    step_batch = Batch.from_views(views, names=[v.name for v in spec.views])
    for index in range(2):
        loop.train_step(state, step_batch, index, epoch=0)
    roots = [model, optimizer, *step_batch.views, step_batch.labels, step_batch.index]
    with DispatchCounter(roots=roots) as counted, _torch_syncs(device) as torch_syncs:
        loop.train_step(state, step_batch, 2, epoch=0)
    with DispatchCounter(roots=[model, optimizer]) as optimizer_counted:
        optimizer.step()
    return {"recipe": recipe.stem, "batch": batch, "views": [f"{v.name} {v.size}" for v in spec.views],
            "sync_count": counted.sync_count, "syncs": dict(counted.syncs), "kernels": counted.kernels,
            "torch_sync_warnings": torch_syncs.count,
            "optimizer": type(optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer).__name__,
            "optimizer_launches": optimizer_counted.launches}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("photometric", "train", "all"), default="all")
    parser.add_argument("--batch", type=int, default=256, help="images per view (photometric)")
    parser.add_argument("--train-batch", type=int, default=4, help="images per step (train)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="eager counts only")
    parser.add_argument("--sync-debug", action="store_true",
                        help="on CUDA, also count torch's own sync warnings (set_sync_debug_mode('warn'))")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    device = torch.device(args.device)
    _torch_syncs.enabled = args.sync_debug
    if args.sync_debug and device.type != "cuda":
        parser.error("--sync-debug needs --device cuda")

    figures = {"photometric": [], "train": []}
    if args.part in ("photometric", "all"):
        for name in SPECS:
            row = photometric_counts(name, args.batch, device, not args.no_compile)
            print(json.dumps(row), flush=True)
            figures["photometric"].append(row)
    if args.part in ("train", "all"):
        for recipe in RECIPES:
            row = train_step_counts(REPO / "recipes" / f"{recipe}.yaml", args.train_batch, device)
            print(json.dumps(row), flush=True)
            figures["train"].append(row)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    section = _section(figures, args)
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


def _section(figures: dict, args) -> str:
    command = "python tools/bench_device_counts.py " + shlex.join(
        [f"--part={args.part}", f"--batch={args.batch}", f"--train-batch={args.train_batch}",
         f"--device={args.device}", *(["--no-compile"] if args.no_compile else []),
         *(["--sync-debug"] if args.sync_debug else [])])
    lines = [BEGIN, "## Device-path counts (kernels, bytes, host syncs, launches)", "",
             f"Machine: {cpu_name()}, Python {platform.python_version()}, torch {torch.__version__}; device "
             f"`{args.device}`. Command: `{command}`. Counts, not timings: they do not depend on the "
             "machine's load (method in the script's docstring and in `sslpipe/counting.py`).", ""]
    if figures["photometric"]:
        compiled = "compiled_kernels" in figures["photometric"][0]
        lines += ["### Photometric stage, device strategy, per batch", "",
                  "| spec | views | eager kernels | eager GB | "
                  + ("compiled kernels | compiled GB (est.) | compile s | max diff |" if compiled else "")
                  .rstrip(" |") + " |",
                  "|---|---|---:|---:|" + ("---:|---:|---:|---:|" if compiled else "")]
        for row in figures["photometric"]:
            cells = [row["spec"], " + ".join(row["views"]) + f" (B={row['batch']})",
                     str(row["eager_kernels"]), f"{row['eager_bytes'] / GB:.2f}"]
            if compiled:
                cells += [str(row["compiled_kernels"]), f"{row['compiled_bytes'] / GB:.2f}",
                          f"{row['compile_s']:.0f}", f"{row['max_difference']:.1e}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if figures["train"]:
        lines += ["### One training step (ResNet-50 recipes)", "",
                  "| recipe | batch | host syncs | syncs by kind | kernels | optimizer launches |",
                  "|---|---:|---:|---|---:|---:|"]
        for row in figures["train"]:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(row["syncs"].items())) or "-"
            if row.get("torch_sync_warnings") is not None:  # --sync-debug on CUDA
                kinds += f"; torch's sync warnings: {row['torch_sync_warnings']}"
            lines.append(f"| {row['recipe']} | {row['batch']} | {row['sync_count']} | {kinds} | "
                         f"{row['kernels']} | {row['optimizer_launches']} |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
