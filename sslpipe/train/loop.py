"""The one training loop, for every method, under HuggingFace Accelerate.

    accelerate launch -m sslpipe.train recipes/simclr_r50_imagenet.yaml \
        data.train='shards/train-{000000..001023}.tar'

Each process reads its own shards through a `ViewLoader` (never `accelerator.prepare`d: that
would read on one process and broadcast); the method runs under DDP and autocast; schedules are
arrays indexed by the global step. Read top to bottom: setup and resume (`train`), then
`train_one_epoch` and its `train_step` (one host sync per step: the non-finite check). What is
saved and how a resume is checked: `checkpoint.py`; what the run folder holds: `run_folder.py`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from sslpipe import distributed
from sslpipe.errors import SslpipeError, describe_os_error
from sslpipe.eval.features import extract_features
from sslpipe.eval.knn import knn_evaluation
from sslpipe.methods import METHODS, Method, Step, StepOutput
from sslpipe.models import build_backbone, convert_global_batchnorm
from sslpipe.optim import OPTIMIZERS, apply_schedule, constant, param_groups, scale_lr, warmup_cosine
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.shardlist import Shard, resolve_shards
from sslpipe.pipeline.spec import PipelineSpec, load_spec
from sslpipe.train.checkpoint import LAST, Checkpointer, MethodRankState, Progress, RNGState
from sslpipe.train.config import Config
from sslpipe.train.memory import recipe_memory_warning
from sslpipe.train.run_folder import MetricsWriter, RunFolder, save_backbone
from sslpipe.train.stop import StopSignals, TrainingStopped
from sslpipe.train.window import Window


@dataclass
class Schedules:
    """Per-step values by name, each (total_steps,): `lr`, `weight_decay` and the method's own."""

    values: dict[str, np.ndarray]
    peak_lr: float

    def at(self, step: int) -> dict[str, float]:
        return {name: float(values[step]) for name, values in self.values.items()}


def train(config: Config, *, resume: str | Path | None = None) -> Path:
    """Train `config`; returns the run folder. `resume`: "auto" (this run's last checkpoint), a
    checkpoint file or a run folder."""
    accelerator = _accelerator(config)
    if accelerator.device.type == "cuda":
        # Every step has the same shapes (one per size group), so cuDNN's search for the fastest
        # convolution algorithms, run on each new shape, pays for itself after the first steps.
        torch.backends.cudnn.benchmark = True
    run = RunFolder(Path(config.train.out) / config.train.run)
    checkpoint = _checkpoint_to_resume(run, resume, accelerator)
    world, rank = accelerator.num_processes, accelerator.process_index
    if config.data.batch_size % world:
        raise SslpipeError(f"data.batch_size={config.data.batch_size} (global) is not divisible by "
                           f"the {world} processes")
    if config.data.batch_size // world < 2:
        raise SslpipeError(f"data.batch_size={config.data.batch_size} leaves "
                           f"{config.data.batch_size // world} image per process: training needs at least "
                           f"2 (BatchNorm's batch statistics, the other images as negatives)")
    shards = _check_inputs(config)  # every file the run will read, before minutes of start-up and epochs
    torch.manual_seed(config.train.seed)  # the same initial weights on every process

    spec = load_spec(config.data.pipeline, config.data.size)
    # The range of `batch.index` over all shards (the loader's `SampleIndex`): a memory bank's rows.
    method = build_method(config, samples=sum(len(shard) for shard in shards))
    needed = method.views_needed()
    needed.check(spec, config.method_name)  # before any work: a spec that does not fit trains wrongly
    warning = recipe_memory_warning(config, spec, world, accelerator.device, accelerator.mixed_precision)
    if warning:  # before the minutes of start-up that a first step out of memory would waste
        accelerator.print(warning, file=sys.stderr)
    loader = ViewLoader(spec, shards, config.data.batch_size // world,
                        device=accelerator.device, rank=rank, world_size=world, seed=config.train.seed,
                        dtype=torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32,
                        channels_last=config.data.channels_last, decode=config.data.decode,
                        num_threads=config.data.num_threads, shuffle_buffer=config.data.shuffle_buffer,
                        windows=needed.windows)
    steps_per_epoch, total_steps = len(loader), len(loader) * config.train.epochs
    schedules = build_schedules(config, method, steps_per_epoch, total_steps)
    if config.optim.warmup_epochs > config.train.epochs:  # a short trial of a long recipe, maybe
        accelerator.print(f"sslpipe: warning: optim.warmup_epochs={config.optim.warmup_epochs:g} is longer "
                          f"than train.epochs={config.train.epochs}: the rate never reaches its peak",
                          file=sys.stderr)
    sync_bn = config.model.sync_bn and world > 1
    if sync_bn:  # the global batch's statistics, with no host sync per layer (SyncBatchNorm has one)
        method = convert_global_batchnorm(method)
    memory_format = torch.channels_last if config.data.channels_last else torch.contiguous_format
    method = method.to(accelerator.device, memory_format=memory_format)
    # The parts' buffers (queues, banks) are kept in step by the method on every process: DDP's
    # broadcast of the initial state leaves them alone (no broadcast per step: `_accelerator`).
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(method, method.unsynced_buffers())
    optimizer = build_optimizer(config, method, schedules.peak_lr)
    model, optimizer = accelerator.prepare(method, optimizer)

    progress, window = Progress(), Window()
    checkpointer = Checkpointer(
        accelerator, run.checkpoints, config.train.keep_checkpoints,
        shared={"model": method, "optimizer": optimizer, "scaler": accelerator.scaler, "progress": progress},
        per_rank={"loader": loader, "method": MethodRankState(method), "rng": RNGState(), "window": window})
    if checkpoint is not None:
        try:
            checkpointer.restore(checkpoint, config.to_dict())
        except ValueError as e:  # a method's or part's refusal of the saved state
            raise SslpipeError(f"cannot resume from {checkpoint}: {e}") from None
    if accelerator.is_main_process:
        for partial in run.remove_partial_files():
            print(f"sslpipe: removed {partial}, left by a save that was killed midway", file=sys.stderr)
        run.write_config(resolved_config(config, accelerator, spec, steps_per_epoch, total_steps, schedules,
                                         checkpoint, sync_bn))
        # What was logged after the checkpoint (or by a run killed before its first one) is logged
        # again from here: the file then reads as one uninterrupted run's.
        run.keep_metrics_until(progress.step)
    accelerator.wait_for_everyone()  # the rows read by `_online_knn_missing` are the kept ones
    if accelerator.log_with:  # <run folder>/tensorboard/; its events after this step are dropped too
        purge = {"tensorboard": {"purge_step": progress.step + 1}}
        accelerator.init_trackers("tensorboard", init_kwargs=purge)

    state = TrainState(accelerator, model, method, optimizer, loader, schedules, config, run,
                       MetricsWriter(run, accelerator), checkpointer, progress, steps_per_epoch, window)
    last_step = min(total_steps, config.train.max_steps or total_steps)
    if checkpoint is not None and progress.step >= last_step:
        accelerator.print(f"sslpipe: {checkpoint} is at step {progress.step}, train.max_steps={last_step}: "
                          f"nothing to train", file=sys.stderr)
    with StopSignals(announce=accelerator.is_main_process) as state.stop:
        if _online_knn_missing(state):  # the run was killed during the epoch's kNN, after its checkpoint
            _online_knn(state, progress.step // steps_per_epoch - 1)
        while progress.step < last_step:
            train_one_epoch(state, last_step)
    if progress.step and progress.skipped == progress.step:
        raise SslpipeError(f"all {progress.step} steps had a non-finite loss and were skipped "
                           f"(train.nonfinite_loss=skip): nothing was learned. Lower optim.lr or set "
                           f"optim.clip_grad_norm")
    if progress.step == total_steps and accelerator.is_main_process:
        try:
            metadata = {"format": "pt", "architecture": config.model.backbone, "keys": method.backbone.KEYS}
            save_backbone(method.backbone.state_dict(), run.backbone, metadata)
        except OSError as e:  # the last checkpoint holds the same weights: a resume only writes the file
            raise SslpipeError(f"{describe_os_error(e, run.backbone)}: training finished and its last "
                               f"checkpoint is intact, the backbone was not written; free space and run "
                               f"the same command with --resume") from None
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.path


def _checkpoint_to_resume(run: RunFolder, resume: str | Path | None, acc: Accelerator) -> Path | None:
    """The checkpoint to start from: `resume`'s, or with "auto" the run's last; None: step 0."""
    if resume is not None and str(resume) != "auto":
        return RunFolder.find_checkpoint(resume)
    if run.has_checkpoint():
        if resume is None:
            raise SslpipeError(f"{run.path} already holds checkpoints: add --resume to continue that run, "
                               f"or choose another train.run")
        return RunFolder.find_checkpoint(run.path)
    if resume is not None:  # killed before its first checkpoint, or a requeued job's first start
        acc.print(f"sslpipe: {run.path} holds no checkpoint yet: the run starts at step 0", file=sys.stderr)
    return None


def _check_inputs(config: Config) -> list[Shard]:
    """The shards and specs of training and of the online evaluation exist and parse, each error
    naming its setting (the evaluation's would otherwise surface after the first epoch). Returns the
    training shards, resolved (their indexes read once, for the method's sample count and the loader)."""
    evaluation = config.eval
    shards = {"data.train": config.data.train}
    specs = {"data.pipeline": (config.data.pipeline, config.data.size)}
    if evaluation.val and evaluation.every_epochs:
        shards.update({"eval.val": evaluation.val, "eval.train": evaluation.train or config.data.train})
        specs["eval.pipeline"] = (evaluation.pipeline, evaluation.size)
    resolved = {}
    for setting, pattern in shards.items():
        try:
            resolved[setting] = resolve_shards(pattern)
        except SslpipeError as e:
            raise SslpipeError(f"{setting}={pattern!r}: {e}") from None
    for setting, (name, size) in specs.items():
        try:
            load_spec(name, size)
        except SslpipeError as e:
            raise SslpipeError(f"{setting}={name!r}: {e}") from None
    return resolved["data.train"]


@dataclass
class TrainState:
    accelerator: Accelerator
    model: torch.nn.Module           # the method as prepared (DDP-wrapped with several processes)
    method: Method                   # the method itself
    optimizer: torch.optim.Optimizer
    loader: ViewLoader
    schedules: Schedules
    config: Config
    run: RunFolder
    metrics: MetricsWriter
    checkpointer: Checkpointer
    progress: Progress               # global steps done, steps skipped on a non-finite loss
    steps_per_epoch: int
    window: Window = field(default_factory=Window)  # the metrics since the last log line (checkpointed)
    stop: StopSignals | None = None  # set while training: a SIGTERM or Ctrl-C asked to stop


def train_one_epoch(state: TrainState, last_step: int) -> None:
    """The rest of the current epoch, or up to `last_step`, checkpointing on the way."""
    acc, config, loader, progress = state.accelerator, state.config, state.loader, state.progress
    epoch, done_in_epoch = divmod(progress.step, state.steps_per_epoch)
    loader.set_epoch(epoch)  # after a resume, the loader is already there, mid-epoch
    if done_in_epoch == 0:
        state.method.on_epoch_start(epoch, _feature_extractor(state))
        if acc.is_main_process:
            for name, array in state.method.artifacts().items():
                state.run.write_artifact(name, array)
    window = state.window
    batches = iter(loader)
    # closed on the way out, also by an error, whose message then starts on a line of its own
    with tqdm(total=state.steps_per_epoch, initial=done_in_epoch, disable=not acc.is_main_process,
              desc=f"epoch {epoch + 1}/{config.train.epochs}", dynamic_ncols=True) as bar:
        while progress.step < last_step and done_in_epoch < state.steps_per_epoch:
            started = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - started

            out, skip, stop = train_step(state, batch, progress.step, epoch)
            if skip:
                progress.skipped += 1
            progress.step += 1
            done_in_epoch += 1
            window.add(None if skip else out, waited, time.perf_counter() - started,
                       batch.size * acc.num_processes)

            if progress.step % config.train.log_every == 0 or done_in_epoch == state.steps_per_epoch:
                values = state.schedules.at(progress.step - 1)  # the step just done
                row = {"step": progress.step, "epoch": epoch, **window.means(acc), **values,
                       "momentum": config.optim.momentum, "skipped_steps": progress.skipped}
                state.metrics.write(row)
                window.reset()
                bar.set_postfix(loss=f"{row.get('loss', math.nan):.4f}",
                                img_s=f"{row['images_per_s']:.0f}", data_wait=f"{row['data_wait']:.0%}",
                                refresh=False)
            bar.update(1)
            every = config.train.checkpoint_every
            if stop or (every and progress.step % every == 0) or done_in_epoch == state.steps_per_epoch \
                    or progress.step == last_step:
                _save_checkpoint(state)
            if stop:
                raise TrainingStopped(state.stop.signum or signal.SIGTERM, progress.step,
                                      state.run.checkpoints / LAST, acc.is_main_process)
    if done_in_epoch == state.steps_per_epoch and _online_knn_due(config, epoch):
        _online_knn(state, epoch)


def _save_checkpoint(state: TrainState) -> None:
    """A checkpoint of the current step, unless a weight or buffer is no longer finite (then the
    last good checkpoint stays the newest, and the run stops)."""
    tensors = {name: t for name, t in state.method.state_dict().items() if t.is_floating_point()}
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()]).tolist()  # one sync
    bad = [name for name, ok in zip(tensors, finite) if not ok]
    if bad:
        last = state.run.checkpoints / LAST
        raise SslpipeError(f"after step {state.progress.step}, {len(bad)} of the model's {len(tensors)} "
                           f"tensors hold nan or inf (the first: {bad[0]}); not saved. The last good "
                           f"checkpoint is {last if last.is_file() else 'none'}. Lower optim.lr or set "
                           f"optim.clip_grad_norm")
    state.checkpointer.save(state.progress.step, state.config.to_dict())


def train_step(state: TrainState, batch: Batch, index: int, epoch: int) -> tuple[StepOutput, bool, bool]:
    """Global step `index` on `batch`: the schedule's values, the forward, and (unless the loss is
    non-finite on any process) backward and update. Returns the method's output, whether the
    update was skipped, and whether a process was asked to stop (`stop.py`); raises under
    `train.nonfinite_loss=stop`. One host sync: `_agree`."""
    acc, config = state.accelerator, state.config
    values = state.schedules.at(index)
    apply_schedule(state.optimizer, values["lr"], values["weight_decay"])
    step = Step(index=index, epoch=epoch, seed=config.train.seed, rank=acc.process_index, values=values,
                device=acc.device)
    with acc.autocast():
        out = state.model(batch, step)
    skip, stop = _agree(acc, out.loss, state.stop is not None and state.stop.requested)
    if skip:
        if config.train.nonfinite_loss == "stop":
            raise SslpipeError(
                f"the loss is {out.loss.item()} at step {index} (epoch {epoch}); stopped before updating "
                f"the weights. The last good checkpoint is {state.run.checkpoints / 'last.pt'} "
                f"(if any). Lower optim.lr, set optim.clip_grad_norm, or set train.nonfinite_loss=skip")
        return out, True, stop
    state.optimizer.zero_grad(set_to_none=True)
    acc.backward(out.loss)
    state.method.before_optimizer_step(step)
    if config.optim.clip_grad_norm is not None:
        acc.clip_grad_norm_(state.model.parameters(), config.optim.clip_grad_norm)
    state.optimizer.step()
    state.method.after_optimizer_step(step)
    return out, False, stop


def _online_knn(state: TrainState, epoch: int) -> None:
    """Weighted kNN top-1 of the backbone on the held-out split, logged with the epoch's metrics."""
    acc, evaluation = state.accelerator, state.config.eval
    memory = evaluation.train or state.config.data.train
    _rank0_norm_statistics(state.method.backbone)
    result = knn_evaluation(state.method.backbone, memory, evaluation.val, pipeline=evaluation.pipeline,
                            size=evaluation.size, k=evaluation.knn_k, temperature=evaluation.knn_temperature,
                            batch_size=evaluation.batch_size, device=acc.device)
    state.metrics.write({"step": state.progress.step, "epoch": epoch,
                         **{f"knn_{k}": v for k, v in result.items()}})
    acc.print(f"epoch {epoch + 1}: kNN top-1 {result['top1']:.1f}% (k={result['k']}) on {evaluation.val}")


def _feature_extractor(state: TrainState):
    """What `Method.on_epoch_start` gets: features of every training image, by global index."""
    def extract(module: torch.nn.Module) -> torch.Tensor:
        evaluation = state.config.eval
        _rank0_norm_statistics(module)
        features = extract_features(module, state.config.data.train, spec=evaluation.pipeline,
                                    size=evaluation.size, batch_size=evaluation.batch_size,
                                    device=state.accelerator.device, desc="features of the training images")
        return features.features

    return extract


def _rank0_norm_statistics(module: torch.nn.Module) -> None:
    """Rank 0's BatchNorm running statistics on every process, before an evaluation in eval mode:
    with per-process BN they differ by rank (DDP broadcasts no buffers), and each process extracts
    its share of the features, which must come from one model, the one rank 0 saves."""
    for norm in module.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._NormBase) and norm.track_running_stats:
            for statistic in (norm.running_mean, norm.running_var, norm.num_batches_tracked):
                distributed.broadcast_(statistic)


def _agree(acc: Accelerator, loss: torch.Tensor, stop_requested: bool) -> tuple[bool, bool]:
    """Whether any process's loss is nan or inf, and whether any was asked to stop: one reduce,
    one sync per step, so that every process skips, and stops after, the same steps."""
    nonfinite = (~torch.isfinite(loss.detach())).float().reshape(1)
    flags = torch.cat([nonfinite, nonfinite.new_full((1,), float(stop_requested))])  # no copy from the host
    any_nonfinite, any_stop = acc.reduce(flags, reduction="sum").tolist()
    return any_nonfinite > 0, any_stop > 0


def _online_knn_due(config: Config, epoch: int) -> bool:
    online = config.eval.every_epochs
    return bool(config.eval.val) and online > 0 and (epoch + 1) % online == 0


def _online_knn_missing(state: TrainState) -> bool:
    """Whether the run resumes at the end of an epoch whose kNN was due and is not in the metrics
    (a kill during it). Every process reads the same file, so all agree."""
    epochs, within = divmod(state.progress.step, state.steps_per_epoch)
    if not epochs or within or not _online_knn_due(state.config, epochs - 1):
        return False
    return not any(row.get("epoch") == epochs - 1 and "knn_top1" in row for row in state.run.read_metrics())


# Setup.

def _accelerator(config: Config) -> Accelerator:
    cuda = torch.cuda.is_available()
    precision = config.train.precision
    if precision == "auto":
        precision = "bf16" if cuda else "no"
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    run_dir = Path(config.train.out) / config.train.run
    # Accelerate keeps the first Accelerator's settings in a process-wide singleton; a process
    # that trains twice (a notebook, the tests) gets each run's own precision. The distributed
    # state (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # DDP would broadcast rank 0's buffers before every forward: MoCo's 65536-row queue, a memory
    # bank, every BatchNorm's statistics, each step for nothing. The parts keep theirs identical (or
    # per rank) themselves, and training-mode BN reads no running statistics. With per-process BN
    # they now differ by rank; rank 0's are what checkpoints and the exported backbone hold, and
    # what evaluation during training takes (`_rank0_norm_statistics`).
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    # cpu=True on a machine without CUDA: Accelerate then runs several processes over gloo.
    return Accelerator(cpu=not cuda, mixed_precision=precision, project_dir=str(run_dir),
                       log_with="tensorboard" if tensorboard else None, kwargs_handlers=[ddp])


def build_method(config: Config, *, samples: int | None = None) -> Method:
    """The recipe's method (registry `METHODS`) around its backbone (registry `BACKBONES`); `samples`:
    the number of training samples over all shards (None where unknown: a memory-bank method refuses)."""
    backbone = build_backbone(config.model.backbone, small_images=config.model.small_images,
                              zero_init_residual=config.model.zero_init_residual)
    try:
        return METHODS[config.method_name](backbone, config.method, global_batch=config.data.batch_size,
                                           samples=samples)
    except ValueError as e:
        raise SslpipeError(f"method {config.method_name}: {e}") from None


def build_schedules(config: Config, method: Method, steps_per_epoch: int, total_steps: int) -> Schedules:
    """The learning rate (warmup + cosine), the weight decay (constant, or cosine to
    `optim.final_weight_decay`) and the method's own schedules."""
    optim = config.optim
    peak = scale_lr(optim.lr, config.data.batch_size, optim.lr_scaling)
    warmup = min(total_steps, round(optim.warmup_epochs * steps_per_epoch))
    values = {"lr": warmup_cosine(peak, peak * optim.final_lr_ratio, total_steps, warmup_steps=warmup),
              "weight_decay": constant(optim.weight_decay, total_steps) if optim.final_weight_decay is None
              else warmup_cosine(optim.weight_decay, optim.final_weight_decay, total_steps)}
    own = method.schedules(total_steps)
    clash = sorted(set(own) & set(values))
    if clash:
        raise SslpipeError(f"method {config.method_name} schedules {clash}, which the loop schedules itself")
    for name, array in own.items():
        if np.shape(array) != (total_steps,):
            raise SslpipeError(f"method {config.method_name}: schedule {name!r} has shape {np.shape(array)}, "
                               f"expected ({total_steps},)")
    return Schedules({**values, **own}, peak)


def build_optimizer(config: Config, method: Method, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer (registry `OPTIMIZERS`) over the method's parameter groups."""
    optim = config.optim
    groups = param_groups(method, weight_decay=optim.weight_decay,
                          exclude_bias_and_norm=optim.exclude_bias_and_norm,
                          fixed_lr_prefixes=method.fixed_lr_prefixes)
    return OPTIMIZERS[optim.name](groups, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                                  eta=optim.eta, beta2=optim.beta2)


def resolved_config(config: Config, acc: Accelerator, spec: PipelineSpec, steps_per_epoch: int,
                    total_steps: int, schedules: Schedules, checkpoint: Path | None, sync_bn: bool) -> dict:
    """The config as run: the recipe's values and what was resolved from them and the machine."""
    recipe = config.to_dict()
    world = acc.num_processes
    return {**recipe,
            "resolved": {"git": _git_sha(), "processes": world, "device": str(acc.device),
                         "precision": acc.mixed_precision, "sync_bn": sync_bn,
                         "batch_per_process": config.data.batch_size // world,
                         "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                         "peak_lr": schedules.peak_lr,
                         "lr_rule": f"{config.optim.lr} x {config.optim.lr_scaling} scaling "
                                    f"at batch {config.data.batch_size}",
                         "schedules": sorted(schedules.values),
                         "spec": {"name": spec.name, "source": spec.source, "fingerprint": spec.fingerprint},
                         "recipe_fingerprint": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
                         .hexdigest(),
                         "resumed_from": str(checkpoint) if checkpoint else None,
                         "sslpipe": _version()}}


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=40"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _version() -> str:
    from sslpipe import __version__
    return __version__
