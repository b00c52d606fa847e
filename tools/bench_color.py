"""Benchmark: each photometric operation of sslpipe (`sslpipe/pipeline/color.py`) against Kornia's
function computing the same values, on one block of views.

    python tools/bench_color.py [--views 8] [--size 224] [--threads 1] [--device cpu]

Median of `--repeats` calls after one warm-up, on random float32 images in [0, 1] with per-sample
parameters. Prints a table and writes it into docs/benchmarks.md between this script's markers.
The defaults are what the CPU path of the loader runs: blocks of 8 views at 224 px on one thread.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchdoc import cpu_name, write_section  # noqa: E402  (tools/, beside this script)

from sslpipe.pipeline import color  # noqa: E402

BEGIN, END = "<!-- bench_color: begin -->", "<!-- bench_color: end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--kernel-size", type=int, default=23)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--doc", type=Path, default=REPO / "docs/benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    args = parser.parse_args()

    import kornia
    from kornia.enhance import (
        adjust_brightness_accumulative,
        adjust_contrast_with_mean_subtraction,
        adjust_hue,
        adjust_saturation_with_gray_subtraction,
    )
    from kornia.filters import filter2d_separable

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    n, device = args.views, torch.device(args.device)
    x = torch.rand(n, 3, args.size, args.size, generator=generator).to(device)
    factor = (0.6 + 0.8 * torch.rand(n, generator=generator)).to(device)
    turns = (0.2 * torch.rand(n, generator=generator) - 0.1).to(device)
    sigma = (0.1 + 1.9 * torch.rand(n, generator=generator)).to(device)
    t = torch.arange(args.kernel_size, dtype=torch.float32, device=device) - (args.kernel_size - 1) / 2
    kernel = torch.exp(-(t / sigma[:, None]) ** 2 / 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)

    cases = [
        ("brightness", lambda: adjust_brightness_accumulative(x, factor),
         lambda: color.brightness(x, factor)),
        ("contrast", lambda: adjust_contrast_with_mean_subtraction(x, factor),
         lambda: color.contrast(x, factor)),
        ("saturation", lambda: adjust_saturation_with_gray_subtraction(x, factor),
         lambda: color.saturation(x, factor)),
        ("hue", lambda: adjust_hue(x, turns * 2 * math.pi), lambda: color.shift_hue(x, turns)),
        (f"blur {args.kernel_size}x{args.kernel_size}",
         lambda: filter2d_separable(x, kernel, kernel, border_type="reflect"),
         lambda: color.gaussian_blur(x, sigma, args.kernel_size)),
    ]
    rows = [(name, _median_ms(theirs, args.repeats, device), _median_ms(ours, args.repeats, device))
            for name, theirs, ours in cases]
    table = "\n".join(["| op | Kornia ms | sslpipe ms | Kornia / sslpipe |", "|---|---:|---:|---:|"]
                      + [f"| {name} | {k:.2f} | {s:.2f} | {k / s:.1f}x |" for name, k, s in rows])
    print(table)
    if args.no_doc:
        return
    command = (f"python tools/bench_color.py --views {args.views} --size {args.size} "
               f"--kernel-size {args.kernel_size} --threads {args.threads} --device {args.device}")
    gpu = f", GPU {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    section = "\n".join([
        BEGIN,
        f"## Photometric operations against Kornia ({args.device})",
        "",
        f"One block of {args.views} views at {args.size} px, float32, per-sample parameters, "
        f"{args.threads} torch thread(s); median of {args.repeats} calls. Each pair computes the same "
        "values (tests/pipeline/test_color.py checks them against each other). This is why the "
        "photometric stage uses its own operations on both devices, with Kornia as the tests' reference.",
        "",
        table,
        "",
        f"- Machine: {cpu_name()}, {len(os.sched_getaffinity(0))} cores{gpu}; {platform.platform()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, kornia {kornia.__version__}",
        f"- Command: `{command}`",
        END,
    ])
    write_section(args.doc, BEGIN, END, section)
    print(f"written to {args.doc}")


def _median_ms(fn, repeats: int, device: torch.device) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


if __name__ == "__main__":
    main()
