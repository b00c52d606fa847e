"""Benchmark: the pretext methods' target making (rotations, patch pairs, shuffled tiles) on its own.

    python tools/bench_pretext.py [--batch 64] [--repeats 20] [--device cpu] [--no-doc]

For each pretext method at its ImageNet recipe's settings and view size, on `--batch` random crops
already on `--device`: source images per second through the method's target making (the median
of `--repeats` timed calls after two warm-ups; wall time on this machine), and, counted once with
`sslpipe.counting.DispatchCounter`, the kernels it dispatches, the bytes they read and write and
its host synchronisations (which must be 0). The backbone is not part of it. Writes the table into
docs/benchmarks.md between this script's markers, with machine, versions and command.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.counting import DispatchCounter  # noqa: E402
from sslpipe.methods import METHODS, Step  # noqa: E402
from sslpipe.methods.rotnet import rotated  # noqa: E402
from sslpipe.models import colorization_resnet18, resnet18  # noqa: E402
from sslpipe.pipeline.spec import load_spec  # noqa: E402
from sslpipe.train.config import load_config  # noqa: E402

BEGIN, END = "<!-- bench_pretext: begin -->", "<!-- bench_pretext: end -->"
# recipe -> what its method makes from the crops before the backbone: (inputs, labels or None)
TARGETS = {
    "rotnet_r50_imagenet": lambda method, x, step: rotated(x, method.config.rotations, step.generator),
    "relative_loc_r50_imagenet": lambda method, x, step: method.patches(x, step),
    "jigsaw_r50_imagenet": lambda method, x, step: method.tiles(x, step),
    "dae_r50_imagenet": lambda method, x, step: method.corrupted(x, step)[:2],
    "cpc_r50_imagenet": lambda method, x, step: (method.patches(x, step), None),
    "colorization_r50_imagenet": lambda method, x, step: _lightness_and_bins(method, x),
}


def _lightness_and_bins(method, crops):
    """Colorization's L input and the soft target's bin indices (its weights come with them)."""
    lab = method.backbone.lab(crops)
    return lab[:, :1], method.targets(lab)[0]


def measure(recipe: str, batch: int, repeats: int, device: torch.device) -> dict:
    config = load_config(REPO / "recipes" / f"{recipe}.yaml")
    size = load_spec(config.data.pipeline).views[0].size
    torch.manual_seed(0)
    method = _method(config, batch, device)
    make = TARGETS[recipe]
    crops = torch.randn(batch, 3, size, size, device=device)
    for index in range(2):
        make(method, crops, Step(index=index, device=device))
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        inputs, labels = make(method, crops, Step(index=index, device=device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    with DispatchCounter(roots=[crops, method]) as counted:
        inputs, labels = make(method, crops, Step(index=repeats, device=device))
    return {"recipe": recipe, "method": config.method_name, "size": size, "batch": batch,
            "inputs": list(inputs.shape), "images_per_s": batch / statistics.median(times),
            "kernels": counted.kernels, "gb": counted.bytes / 1e9, "syncs": counted.sync_count}


def _method(config, batch: int, device: torch.device):
    """The recipe's method on a ResNet-18 (the backbone plays no part in the target making; the
    colorization's converts the crops to Lab)."""
    cls = METHODS[config.method_name]
    backbone = colorization_resnet18() if config.method_name == "colorization" else resnet18()
    return cls(backbone, config.method, global_batch=batch).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [measure(recipe, args.batch, args.repeats, device) for recipe in TARGETS]
    command = "python tools/bench_pretext.py " + shlex.join(
        [f"--batch={args.batch}", f"--repeats={args.repeats}", f"--device={args.device}"])
    lines = [BEGIN, "## Pretext target making (the methods' own inputs and labels)", "",
             f"Machine: {cpu_name()}, Python {platform.python_version()}, torch {torch.__version__}; "
             f"device `{args.device}`, {torch.get_num_threads()} threads. Command: `{command}`. "
             "Random crops at each ImageNet recipe's view size, already on the device; the backbone is "
             "not included. Images/s: median wall time (this machine, shared); kernels, bytes and host "
             "syncs: counted (`sslpipe.counting`), the same on any machine.", "",
             "| method | crops | what it makes | source images/s | kernels | GB moved | host syncs |",
             "|---|---|---|---:|---:|---:|---:|"]
    for row in rows:
        made = " x ".join(map(str, row["inputs"]))
        lines.append(f"| {row['method']} | {row['batch']} x {row['size']} px | {made} | "
                     f"{row['images_per_s']:,.0f} | {row['kernels']} | {row['gb']:.3f} | {row['syncs']} |")
    section = "\n".join([*lines, END])
    print(section)
    if not args.no_doc:
        write_section(args.doc, BEGIN, END, section)
        print(f"written to {args.doc}")


if __name__ == "__main__":
    main()
