"""Checks that a GPU pipeline can run as configured, made once when a CUDA loader starts.

- NPP: DALI for CUDA 12 loads NPP (`libnppc.so.12`, `libnppicc.so.12`, `libnppig.so.12`) with
  dlopen only when an operator first needs it, and none of the wheels it depends on brings NPP:
  a missing library would stop training at some batch, deep in DALI's threads. `check_npp` loads
  them up front, where DALI looks for them, and names the package that provides them.
- ROI decoding: nvImageCodec 0.9.0 (DALI 2.4's) has an open regression in GPU ROI decoding
  (NVIDIA/nvImageCodec#55: INTERNAL_ERROR on some GPUs, a segfault on others). `decode="roi"` is
  kept only where ROI decoding of a few samples of the first shard matches a full decode then
  crop, checked in a child process so that a segfault cannot take the loader with it; otherwise
  the loader decodes once, with one warning.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.dali_stage import DecodeMode, DecoderOptions
from sslpipe.pipeline.shardlist import Shard

# What libdali_operators.so (DALI 2.4, CUDA 12) dlopens: each soname, else its unversioned name
# (DALI's dali/util/npp_wrap.cc; the names are in the library's strings).
NPP_LIBRARIES = ("libnppc.so.12", "libnppicc.so.12", "libnppig.so.12")
NPP_PACKAGE = "nvidia-npp-cu12"
ROI_ISSUE = "NVIDIA/nvImageCodec#55"
# (top, left, bottom, right) as fractions of the image: two quarters and two windows whose edges
# fall inside JPEG blocks (a region decode starts and ends mid-block there).
WINDOWS = ((0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0), (0.13, 0.27, 0.71, 0.93), (0.31, 0.05, 0.97, 0.44))
ROI_SAMPLES = 8
# The largest |ROI decode - full decode then crop| accepted, in uint8 steps: a region decoder may
# upsample chroma differently along the region's border; a broken one gives other pixels or none.
# (DALI's CPU decoders differ by 0.)
ROI_TOLERANCE = 8
ROI_TIMEOUT_S = 180

_checked: dict[tuple, DecodeMode] = {}  # (device_id, decoder) -> the decode mode that check gave


def check_gpu_pipeline(shard: Shard, decode: DecodeMode, device_id: int,
                       decoder: DecoderOptions = DecoderOptions()) -> DecodeMode:
    """The decode mode a CUDA loader on GPU `device_id` runs with: `decode`, or `"once"` (with a
    warning) where `"roi"` was asked for and ROI decoding of `shard`'s first samples failed its
    check (made once per GPU and decoder settings in a process). Raises `SslpipeError` where
    DALI's NPP libraries cannot be loaded."""
    check_npp()
    if decode != "roi":
        return decode
    key = (device_id, decoder)
    if key not in _checked:
        failure = roi_failure(shard, device_id, decoder)
        if failure:
            warnings.warn(
                f"decode='roi' (data.decode) falls back to 'once' on cuda:{device_id}: ROI decoding "
                f"{failure}. nvImageCodec 0.9.0 has an open GPU ROI-decode regression ({ROI_ISSUE}); "
                f"decode='once' (data.decode: once) skips this check.", RuntimeWarning, stacklevel=3)
        _checked[key] = "once" if failure else "roi"
    return _checked[key]


# NPP

def check_npp() -> None:
    """Raise `SslpipeError` naming the first NPP library DALI needs that cannot be loaded."""
    folders = npp_folders()
    for soname in NPP_LIBRARIES:
        errors = []
        for candidate in _candidates(soname, folders):
            try:
                _load_library(candidate)
                break
            except OSError as e:
                errors.append(str(e))
        else:
            searched = ", ".join(str(f) for f in folders) or "no folder of DALI's RUNPATH exists"
            raise SslpipeError(
                f"DALI's GPU operators need NPP's {soname} (CUDA 12), which could not be loaded "
                f"({errors[0]}; also searched: {searched}): install it with `pip install {NPP_PACKAGE}` "
                f"(or put a CUDA 12 toolkit's lib64 on LD_LIBRARY_PATH), or use device='cpu'")


def npp_folders() -> list[Path]:
    """The existing folders where DALI's libraries find NPP besides the default search path: their
    RUNPATH holds `$ORIGIN/../npp/lib` (the `nvidia-npp-cu12` wheel's folder), `/usr/local/cuda/lib64`
    and `$ORIGIN/../cu12/lib`, which a dlopen from Python does not search."""
    folders = [Path("/usr/local/cuda/lib64")]
    spec = importlib.util.find_spec("nvidia.dali")
    if spec and spec.origin:
        nvidia = Path(spec.origin).parent.parent
        folders = [nvidia / "npp" / "lib", *folders, nvidia / "cu12" / "lib"]
    return [f for f in folders if f.is_dir()]


def _candidates(soname: str, folders: list[Path]) -> list[str]:
    unversioned = soname.split(".so")[0] + ".so"
    return [soname, unversioned, *(str(f / name) for f in folders for name in (soname, unversioned))]


def _load_library(name: str) -> None:
    ctypes.CDLL(name)  # stays loaded: DALI's own dlopen of the soname then finds it


# ROI decoding

def roi_difference(tar: str, index: str, device: str = "gpu", device_id: int | None = 0,
                   samples: int = ROI_SAMPLES, decoder: DecoderOptions = DecoderOptions()) -> int:
    """The largest |ROI decode - full decode then crop| over `WINDOWS` for the first `samples`
    images of the shard `tar`, decoded on `device` (`"gpu"`: DALI's mixed decoders; `"cpu"`).
    Raises `RuntimeError` where DALI fails or a region's shape differs from its crop's."""
    from nvidia.dali import fn, pipeline_def, types  # heavy import, only when checked

    decode_device = "mixed" if device == "gpu" else "cpu"
    options = decoder.dali_args() if device == "gpu" else {}  # the loader's decoder settings

    @pipeline_def(batch_size=samples, num_threads=2, device_id=device_id if device == "gpu" else None,
                  prefetch_queue_depth=1, set_affinity=False)
    def compare():
        jpegs = fn.readers.webdataset(paths=[tar], index_paths=[index], ext=["jpg"])
        full = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB, **options)
        pairs = []
        for top, left, bottom, right in WINDOWS:
            window = dict(rel_start=(top, left), rel_end=(bottom, right), axis_names="HW")
            pairs += [fn.decoders.image_slice(jpegs, device=decode_device, output_type=types.RGB, **window,
                                              **options),
                      fn.slice(full, **window)]
        return tuple(pairs)

    pipe = compare()
    pipe.build()
    outputs = [o.as_cpu() if hasattr(o, "as_cpu") else o for o in pipe.run()]
    worst = 0
    for w, (regions, crops) in enumerate(zip(outputs[::2], outputs[1::2])):
        for j in range(samples):
            region, crop = np.asarray(regions.at(j)), np.asarray(crops.at(j))
            if region.shape != crop.shape:
                raise RuntimeError(f"window {WINDOWS[w]} of sample {j}: region {region.shape}, "
                                   f"crop {crop.shape}")
            worst = max(worst, int(np.abs(region.astype(np.int16) - crop).max(initial=0)))
    return worst


def roi_failure(shard: Shard, device_id: int | None, decoder: DecoderOptions = DecoderOptions(),
                device: str = "gpu") -> str | None:
    """Why ROI decoding on GPU `device_id` cannot be trusted, or None where it matched:
    `roi_difference` on `shard` in a child process (a segfault there is an answer, not the end of
    the training process), with this process's import path."""
    code = ("import json, sys; sys.path[:] = json.loads(sys.argv[2]); "
            "import sslpipe.pipeline.gpu_setup as g; g._child(sys.argv[1])")
    args = {"tar": str(shard.path), "index": str(shard.index), "device": device, "device_id": device_id,
            "samples": min(ROI_SAMPLES, len(shard)), "decoder": dataclasses.asdict(decoder)}
    try:
        done = subprocess.run([sys.executable, "-c", code, json.dumps(args), json.dumps(sys.path)],
                              capture_output=True, text=True, timeout=ROI_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"of {shard.path.name} did not finish within {ROI_TIMEOUT_S} s"
    if done.returncode < 0:
        return f"of {shard.path.name} killed its check process (signal {-done.returncode})"
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].isdigit():
        last = (done.stderr.strip().splitlines() or ["no error message"])[-1]
        return f"of {shard.path.name} failed (exit status {done.returncode}): {last[:300]}"
    if int(lines[-1]) > ROI_TOLERANCE:
        return (f"of {shard.path.name} differs from a full decode then crop by up to {lines[-1]} "
                f"(tolerance {ROI_TOLERANCE})")
    return None


def _child(args: str) -> None:
    """The check process: prints `roi_difference`; an error exits non-zero."""
    a = json.loads(args)
    print(roi_difference(a["tar"], a["index"], a["device"], a["device_id"], a["samples"],
                         DecoderOptions(**a["decoder"])))
