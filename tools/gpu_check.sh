#!/usr/bin/env bash
# The GPU check: every figure the project can only measure on a GPU, in one run of about 8
# minutes on one H100/H200, written under OUT (logs, JSON and a benchmarks.md of the sections).
#
#   bash tools/gpu_check.sh OUT
#   GPU_CHECK_DRY_RUN=1 bash tools/gpu_check.sh OUT     # on the CPU, at toy sizes: checks the steps
#
# From a clean checkout on a host whose Python has torch (CUDA), accelerate and einops. It installs
# nothing: DALI, webdataset and kornia are imported from that Python or from the offline bundle
# (shared/tools/offline-bundle.sh; build it with EXTRA_PKGS=nvidia-npp-cu12, which DALI's GPU
# operators load at run time) unpacked at $SSLPIPE_SITE (default /tmp/sslpipe-site/site). Steps:
#   env       GPU, driver and package versions
#   tests     the CUDA-only tests (the files that hold them)
#   fixture   ~4,200 ImageNet-like JPEGs of ~110 KB (quality 94), converted to shards
#   pipeline  tools/bench_pipeline.py: SimCLR and SwAV specs, decode once and roi, B=256, with the
#             GPU memory in use sampled by nvidia-smi meanwhile (its peak: gpu_memory.txt)
#   train     tools/bench_train.py: ResNet-50 SimCLR, bf16, channels-last, pipeline-fed vs resident
#   counts    tools/bench_device_counts.py on CUDA with torch's sync warnings counted
# A step that fails is logged and the next runs; the exit status is the number of failed steps.
set -uo pipefail
out=${1:?usage: bash tools/gpu_check.sh OUT}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$repo"
python=${PYTHON:-python3}
site=${SSLPIPE_SITE:-/tmp/sslpipe-site/site}
export PYTHONUNBUFFERED=1 PYTHONPATH="$repo:$site${PYTHONPATH:+:$PYTHONPATH}"
dry=${GPU_CHECK_DRY_RUN:-0}
if [ "$dry" = 1 ]; then  # the same steps on the CPU, small enough for a test
    device=cpu per_class=4 batch=8 batches=2 steps=2 train_batch=2 step_limit=600
    recipe=recipes/simclr_small.yaml train_args=() counts_args=(--no-compile)
    tests_args=(--collect-only -q)
else
    device=cuda per_class=700 batch=256 batches=12 steps=20 train_batch=8 step_limit=300
    recipe=recipes/simclr_r50_imagenet.yaml train_args=(train.precision=bf16 data.channels_last=true)
    counts_args=(--sync-debug) tests_args=(-q -rs)
fi
doc=$out/benchmarks.md
failed=0

step() {  # step NAME COMMAND...: run it under a time limit, its output in OUT/NAME.log
    local name=$1; shift
    echo "== $name: $*" | tee -a "$out/steps.log"
    local started=$SECONDS
    timeout "$step_limit" "$@" >"$out/$name.log" 2>&1
    local status=$?
    echo "$name: exit $status after $((SECONDS - started)) s" | tee -a "$out/steps.log"
    [ "$status" -eq 0 ] || { failed=$((failed + 1)); tail -n 5 "$out/$name.log"; }
}

: >"$out/steps.log"
step env "$python" -c "
import importlib, platform, subprocess, torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda)
print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for name in ('nvidia.dali', 'webdataset', 'kornia', 'accelerate', 'einops'):
    module = importlib.import_module(name)  # a missing one fails this step, named
    print(name, getattr(module, '__version__', '?'), module.__file__)
if torch.cuda.is_available():
    print(subprocess.run(['nvidia-smi'], capture_output=True, text=True).stdout)
elif '$device' == 'cuda':
    raise SystemExit('no CUDA GPU visible to torch')
"
step tests "$python" -m pytest "${tests_args[@]}" tests/pipeline/test_gpu_setup.py tests/pipeline/test_loader.py \
    tests/pipeline/test_photometric.py
step fixture "$python" -c "
import sys; sys.path.insert(0, 'tools')
from pathlib import Path
from benchdoc import fixture_shards, mean_jpeg_kb
pattern = fixture_shards(Path('$out/fixture'), $per_class, quality=94)
print(pattern, f'{mean_jpeg_kb(pattern):.0f} KB per JPEG')
Path('$out/fixture/pattern').write_text(pattern)
"
shards=$(cat "$out/fixture/pattern" 2>/dev/null || echo missing)

memory_log=$out/gpu_memory.csv
if command -v nvidia-smi >/dev/null && [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$memory_log" &
    sampler=$!
fi
step pipeline "$python" tools/bench_pipeline.py --shards "$shards" --specs simclr swav_multicrop \
    --device "$device" --decode once roi --batch-size "$batch" --batches "$batches" --no-baseline --doc "$doc"
if [ -n "${sampler:-}" ]; then
    kill "$sampler" 2>/dev/null
    sort -n "$memory_log" | tail -n 1 | sed 's/$/ MiB peak GPU memory in use during the pipeline benchmark/' \
        >"$out/gpu_memory.txt"
fi
step train "$python" tools/bench_train.py --recipe "$recipe" --shards "$shards" --steps "$steps" --warmup 5 \
    --doc "$doc" "data.batch_size=$batch" "${train_args[@]}"
step counts "$python" tools/bench_device_counts.py --device "$device" --batch "$batch" \
    --train-batch "$train_batch" --json "$out/counts.json" --doc "$doc" "${counts_args[@]}"

echo "gpu_check: $failed step(s) failed; figures and logs in $out" | tee -a "$out/steps.log"
exit "$failed"
