"""The loader: batches of augmented views on the target device, for any PyTorch training loop.

    loader = ViewLoader("simclr", "shards/train-*.tar", batch_size=256, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:               # batch.views: [ (256, 3, 224, 224) ] * 2
            ...

Stages, top to bottom: shard list (checked) -> DALI (read, decode, crop, flip; one pipeline
per epoch, on a GPU the next one built on a thread while an epoch ends) -> uint8 views grouped by size ->
photometric stage (the op table, Kornia transforms, normalize) -> `Batch` (views, size groups,
labels, global sample index, lazy keys).

Epoch semantics: every rank gets `len(loader)` batches per epoch, no sample twice in an epoch.
Training drops each rank's remainder (at most `batch_size` samples); evaluation (`train=False`)
keeps it, so a rank's last batch may be short (even empty when ranks differ by one sample).
"""

from __future__ import annotations

import functools
import os
import random
import threading
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from sslpipe import distributed, seeds
from sslpipe.errors import SslpipeError
from sslpipe.pipeline import gpu_setup
from sslpipe.pipeline.batch import Batch, SizeGroup
from sslpipe.pipeline.dali_stage import DecodeMode, DecoderOptions, EpochPlan, build_pipeline
from sslpipe.pipeline.diagnose import diagnose_failure
from sslpipe.pipeline.ops import OPS
from sslpipe.pipeline.photometric import PhotometricStage
from sslpipe.pipeline.shardlist import SampleIndex, Shard, cls_values, rank_range, resolve_shards
from sslpipe.pipeline.spec import PipelineSpec, differences, load_spec

STATE_VERSION = 2


class ViewLoader:
    """Augmented views of every image in WebDataset shards, cropped by DALI, augmented by torch ops.

    Args:
        spec: a `PipelineSpec`, a YAML path, or a shipped spec's name (`"simclr"`).
        shards: a glob or brace pattern (`"out/train-*.tar"`) or a list of tar paths, each with
            its DALI `.idx` beside it (as `sslpipe convert` writes them), or `resolve_shards`' result.
        batch_size: images per batch per rank (each gives one sample in every view).
        device: `"cpu"` (DALI CPU operators, the photometric ops on CPU tensors) or `"cuda"`/`"cuda:N"`
            (DALI mixed decoding with the hardware JPEG decoder, the photometric ops on the GPU).
        rank, world_size: this process's place; default from `torch.distributed` when initialized.
        seed: shard order, shuffle and augmentation randomness derive from (seed, epoch, rank).
        train: shuffle and drop each rank's last partial batch; `False` reads in order and keeps it.
        dtype, channels_last: of the returned views (float32 or bfloat16).
        normalize: `False` returns views in [0, 1] (for looking at them).
        decode: `"once"` (decode, then crop per view) or `"roi"` (decode each view's region).
        num_threads: DALI CPU threads (default: this process's share of the cores, at most
            `GPU_THREADS` on a GPU).
        shuffle_buffer: samples DALI shuffles among while reading (the shards are pre-shuffled).
        windows: also return each view's crop window and flip (`Batch.windows`, `Batch.flips`);
            random crops are then drawn by DALI's `random_crop_generator` (the same distribution
            as the fused `random_resized_crop`, other draws; its cost is in docs/benchmarks.md).
        size: rescale the spec to this size (`PipelineSpec.resized`), e.g. `eval` for 64-px images.
        compile: run the photometric stage through `torch.compile` (default: on a GPU; if compiling
            fails it warns once and runs eagerly, with the same values).
    """

    def __init__(self, spec: str | Path | PipelineSpec, shards, batch_size: int, *,
                 device: str | torch.device = "cpu", rank: int | None = None, world_size: int | None = None,
                 seed: int = 0, train: bool = True, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, normalize: bool = True, decode: DecodeMode = "once",
                 decoder: DecoderOptions = DecoderOptions(), num_threads: int | None = None,
                 shuffle_buffer: int = 4096, prefetch: int = 2, windows: bool = False,
                 size: int | None = None, compile: bool | None = None):
        self.spec = load_spec(spec, size)
        self.device = _device(device)
        self.rank, self.world_size = _place(rank, world_size)
        if batch_size < 1:
            raise SslpipeError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in ("once", "roi"):
            raise SslpipeError(f"decode must be 'once' or 'roi', got {decode!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise SslpipeError(f"dtype must be torch.float32, bfloat16 or float16, got {dtype}")
        # DALI's reader crashes the process (SIGSEGV) on an initial_fill below 1; it refuses the
        # others itself, but with a traceback from deep in its pipeline.
        if shuffle_buffer < 1:
            raise SslpipeError(f"shuffle_buffer must be >= 1, got {shuffle_buffer}")
        if num_threads is not None and num_threads < 1:
            raise SslpipeError(f"num_threads must be >= 1 (or None: this process's share of the cores), "
                               f"got {num_threads}")
        if prefetch < 1:
            raise SslpipeError(f"prefetch must be >= 1, got {prefetch}")
        self.shards: list[Shard] = resolve_shards(shards)
        self.batch_size, self.seed, self.train = batch_size, seed, train
        self.decode, self.decoder, self.prefetch = decode, decoder, prefetch
        self.shuffle_buffer, self.windows = shuffle_buffer, windows
        self.num_threads = num_threads or _default_threads(self.device)
        if self.device.type == "cuda":  # NPP loadable; "roi" only where ROI decoding checks out
            self.decode = gpu_setup.check_gpu_pipeline(self.shards[0], decode, self.device.index, decoder)
        self.samples = SampleIndex(self.shards)
        self.num_samples = len(self.samples)
        self._len = self._batches_per_epoch()
        self._groups = _size_groups(self.spec)
        try:
            compile = self.device.type == "cuda" if compile is None else compile
            self._stages = [PhotometricStage([self.spec.views[i] for i in members], batch_size, self.device,
                                             normalize=normalize, dtype=dtype, channels_last=channels_last,
                                             compile=compile)
                            for _, members in self._groups]
        except ValueError as e:
            raise SslpipeError(f"{self.spec.source}: {e}") from None
        self.epoch, self._position = 0, 0
        self._pipe, self._pipe_epoch, self._checkpoint = None, None, None
        self._scheduled: int | None = None  # the epoch's batches the current pipeline was asked for (`_run`)
        self._ahead: _Ahead | None = None  # the next epoch's pipeline, building or built (see `__iter__`)
        # On a GPU the next epoch's pipeline is built ahead (`__iter__`). On the CPU, where DALI's CPU
        # operators already keep every core busy, a second pipeline moves the epoch's start-up onto
        # the previous epoch's batches (the one after its start took ~2x a steady batch, against
        # ~1.3x for an epoch's first batch built at its start; docs/benchmarks.md, bench_loader_host).
        self._builds_ahead = self.device.type == "cuda"
        self._failed: str | None = None  # why the loader stopped; it cannot go on from there
        self._held = None  # the last batch's DALI outputs (see `_run`)

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank."""
        return self._len

    def set_epoch(self, epoch: int) -> None:
        """Go to epoch `epoch`. The current epoch is left where it stands (like DistributedSampler):
        after `load_state_dict`, `set_epoch(saved epoch)` keeps the resumed position."""
        self._check_usable()
        if epoch != self.epoch:
            self.epoch, self._position, self._pipe, self._checkpoint = epoch, 0, None, None
            if self._ahead is not None and self._ahead.epoch != epoch:
                self._drop_ahead()

    def __iter__(self):
        """The remaining batches of the current epoch; the epoch then advances by one.

        On a GPU, near the end of a training epoch the next epoch's pipeline is built, and its first
        batch run, on a thread (`_Ahead`), so that the next epoch does not start with DALI's build and
        shuffle-buffer fill: at most one such pipeline, dropped by `set_epoch` to another epoch."""
        self._check_usable()
        if self._position == self._len:  # the last batch was taken, but the loop stopped before the end
            self.epoch, self._position, self._pipe = self.epoch + 1, 0, None
        first = self._start() if self._pipe is None or self._pipe_epoch != self.epoch else None
        while self._position < self._len:
            outputs = first if first is not None else self._run()
            first = None
            try:
                batch = self._batch(outputs, self._position)
            except BaseException as e:
                # The batch's DALI outputs are taken: going on would skip it and end the epoch on
                # samples past its end.
                self._stop(str(e) or type(e).__name__)
                raise
            self._position += 1
            yield batch
            if self._ahead is None and self._ahead_due():
                self._build_ahead()
        self.epoch, self._position, self._pipe = self.epoch + 1, 0, None

    def state_dict(self) -> dict:
        """The position after the last batch returned: resuming from it gives the same remaining
        samples with the same augmentations as the uninterrupted run."""
        self._check_usable()
        epoch, position = self.epoch, self._position
        if position == self._len:
            epoch, position = epoch + 1, 0
        dali = None
        if position and self._pipe is not None:
            dali = self._pipe.checkpoint()
        elif position:
            dali = self._checkpoint  # restored but not yet iterated
        return {"version": STATE_VERSION, "epoch": epoch, "position": position, "dali": dali,
                "seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "batch_size": self.batch_size, "num_samples": self.num_samples, "windows": self.windows,
                "spec": self.spec.name, "spec_fingerprint": self.spec.fingerprint,
                "spec_views": self.spec.to_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict()` of a loader with the same shards, spec and settings."""
        if state.get("version") != STATE_VERSION:
            raise SslpipeError(f"loader state of version {state.get('version')}, expected {STATE_VERSION}")
        for key in ("seed", "rank", "world_size", "batch_size", "num_samples", "windows"):
            if state[key] != getattr(self, key):
                raise SslpipeError(f"cannot resume: the saved loader had {key}={state[key]}, this one has "
                                   f"{getattr(self, key)} (the same shards and settings are needed)")
        if state["spec_fingerprint"] != self.spec.fingerprint:
            changed = differences(state["spec_views"], self.spec.to_dict())
            raise SslpipeError(f"cannot resume: the pipeline spec {self.spec.name!r} ({self.spec.source}) "
                               f"differs from the one the saved loader ran ({state['spec']!r}): "
                               f"{'; '.join(changed[:5]) or 'its views'}"
                               f"{f' and {len(changed) - 5} more' if len(changed) > 5 else ''}")
        if state["position"] and not state["dali"]:
            raise SslpipeError("cannot resume: the saved loader state has a position but no DALI checkpoint")
        self.epoch, self._position, self._checkpoint = state["epoch"], state["position"], state["dali"]
        self._pipe, self._failed = None, None
        self._drop_ahead()

    # The stages.

    def _batches_per_epoch(self) -> int:
        sizes = [b - a for a, b in (rank_range(self.num_samples, r, self.world_size)
                                    for r in range(self.world_size))]
        batches = min(sizes) // self.batch_size if self.train else -(-max(sizes) // self.batch_size)
        if batches == 0:
            raise SslpipeError(
                f"the shards hold {self.num_samples} samples: {min(sizes)} per rank, fewer than one batch "
                f"of {self.batch_size} (world size {self.world_size}); lower the batch size")
        return batches

    def _plan(self, epoch: int) -> EpochPlan:
        shards = list(self.shards)
        if self.train:  # the same shard order on every rank: the ranks' parts stay disjoint
            random.Random(f"{self.seed}:{epoch}").shuffle(shards)
        dali_seed = int(np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0] >> 1)
        return EpochPlan(tars=tuple(str(s.path) for s in shards), indexes=tuple(str(s.index) for s in shards),
                         rank=self.rank, world_size=self.world_size, shuffle=self.train,
                         shuffle_buffer=self.shuffle_buffer, seed=dali_seed)

    def _build(self, epoch: int, checkpoint: str | None) -> tuple[object, list[str]]:
        """The built DALI pipeline of `epoch` and its output names (may run on `_Ahead`'s thread)."""
        try:
            return build_pipeline(
                self.spec, self._plan(epoch), self.batch_size, "gpu" if self.device.type == "cuda" else "cpu",
                self.device.index if self.device.type == "cuda" else None, self.num_threads, self.decode,
                self.decoder, self.prefetch, checkpoint, self.windows)
        except RuntimeError as e:
            raise SslpipeError(f"DALI could not start the pipeline of {self.spec.source}: {e}") from None

    def _start(self):
        """Make `self._pipe` the current epoch's pipeline: the one built ahead when it is this epoch's
        (returning its first batch's outputs, already run), else one built now from `_checkpoint`."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.epoch != self.epoch or self._checkpoint is not None:
            if ahead is not None:
                ahead.join()  # never two pipelines besides the current one
            self._pipe, self._outputs = self._build(self.epoch, self._checkpoint)
            self._pipe_epoch, self._checkpoint, self._scheduled = self.epoch, None, None
            return None
        ahead.join()
        if ahead.error is not None:
            raise ahead.error  # as if raised here (`_build`'s SslpipeError)
        self._pipe, self._outputs, self._pipe_epoch = ahead.pipe, ahead.names, self.epoch
        self._scheduled = self.prefetch  # its first run asked for `prefetch` batches
        if ahead.dali_error is not None:
            self._fail(ahead.dali_error)  # its first batch failed: as in `_run`
        if ahead.stream is not None:
            # Its outputs were ordered on the stream current when the build began: order this one after it.
            torch.cuda.current_stream(self.device).wait_stream(ahead.stream)
            self._held = ahead.outputs
        return ahead.outputs

    def _ahead_due(self) -> bool:
        """Whether to build the next epoch now: in training, once the reader has read (about) its
        last sample, since it runs ahead of the batches handed out by the shuffle buffer and the
        prefetch queue; the next pipeline's own fill then overlaps this epoch's last batches."""
        runs_ahead = -(-self.shuffle_buffer // self.batch_size) + self.prefetch
        return self._builds_ahead and self.train and self._len - self._position <= runs_ahead

    def _build_ahead(self) -> None:
        stream = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
        self._ahead = _Ahead(self.epoch + 1, functools.partial(self._build, self.epoch + 1, None), stream)

    def _drop_ahead(self) -> None:
        if self._ahead is not None:
            self._ahead.join()  # its pipeline goes with it, before any other is built
            self._ahead = None

    def _check_usable(self) -> None:
        if self._failed:
            raise SslpipeError(f"this loader stopped on an error ({self._failed}); its position is lost: "
                               f"resume from a saved state_dict() in a new loader")

    def _run(self):
        """The next batch's DALI outputs. DALI's `run()` would ask for one more batch each time, so
        that a pipeline computes `prefetch - 1` batches past the epoch's end, which nobody takes:
        work in the way of the next epoch's pipeline. Here the pipeline is asked for batches up
        to the epoch's end only (its first run still asks for `prefetch`)."""
        try:
            if self._scheduled is None:
                self._pipe.schedule_run()  # DALI's prefetch: `prefetch` batches
                self._scheduled = self._position + self.prefetch
            elif self._scheduled < self._len:
                self._pipe.schedule_run()
                self._scheduled += 1
            if self.device.type == "cuda":
                # Outputs ordered on torch's stream, not host-synchronous. The previous batch's
                # outputs are kept alive one batch longer, until well after their copies were queued.
                outputs = self._pipe.outputs(torch.cuda.current_stream(self.device))
                self._held = outputs
                return outputs
            return self._pipe.outputs()
        except RuntimeError as e:
            self._fail(e)

    def _fail(self, dali_error: RuntimeError):
        """Stop on DALI's error at the current position, naming the shard and key at fault."""
        error = diagnose_failure(self.shards, self._plan(self.epoch), self._position, self.batch_size,
                                 self.prefetch, str(dali_error))
        self._stop(str(error))
        raise error from None

    def _stop(self, reason: str) -> None:
        """Make the loader unusable: its position is lost (a failed DALI pipeline cannot run again,
        a batch whose outputs were taken cannot be had again)."""
        self._pipe, self._ahead, self._failed = None, None, reason

    def _batch(self, outputs, position: int) -> Batch:
        named = dict(zip(self._outputs, outputs))
        count = self.batch_size
        if not self.train:  # the padded tail of the last batch repeats a sample: cut it off
            start, stop = rank_range(self.num_samples, self.rank, self.world_size)
            count = max(0, min(count, stop - start - position * self.batch_size))
        # DALI pads both to the batch's longest: one (B, W) uint8 array each, parsed without a loop.
        index = self.samples.of_sources(np.asarray(named["sources"].as_tensor())[:count])
        labels = self._labels(np.asarray(named["labels"].as_tensor())[:count], index)
        batch_seed = seeds.derive(self.seed, self.epoch, self.rank, position)
        views: list[torch.Tensor | None] = [None] * len(self.spec.views)
        groups = []
        for number, ((size, members), stage) in enumerate(zip(self._groups, self._stages)):
            images = torch.empty((len(members) * self.batch_size, size, size, 3), dtype=torch.uint8,
                                 device=self.device)
            for slot, i in enumerate(members):
                _copy(named[f"view{i}"], images[slot * self.batch_size:(slot + 1) * self.batch_size])
            # NHWC -> NCHW as a channels-last view: no copy; the stage accepts any strides.
            augmented = stage(images.permute(0, 3, 1, 2), seeds.derive(batch_seed, number))
            # (a short evaluation batch: its padded rows cut off, a copy; else views of one tensor)
            per_view = rearrange(augmented, "(v b) c h w -> v b c h w", v=len(members))[:, :count]
            grouped = rearrange(per_view, "v b c h w -> (v b) c h w")
            groups.append(SizeGroup(size, tuple(members), grouped))
            for slot, i in enumerate(members):
                views[i] = grouped[slot * count:(slot + 1) * count]
        batch = Batch(views=views, labels=labels.to(self.device, non_blocking=True),
                      index=torch.from_numpy(index).to(self.device, non_blocking=True), groups=groups,
                      names=tuple(v.name for v in self.spec.views), _keys=lambda: self.samples.keys(index))
        if self.windows:
            batch.windows, batch.flips = self._windows(named, count)
        return batch

    def _labels(self, rows: np.ndarray, index: np.ndarray) -> torch.Tensor:
        """(B,) int64 labels from the `.cls` bytes (B, W), zero-padded, of the samples `index` (B,)."""
        values, integer = cls_values(rows)
        if not integer.all():  # the loader then stops (`__iter__`)
            j = int(np.argmin(integer))
            shard, position = self.samples.locate(int(index[j]))
            raise SslpipeError(f"{shard.path}: sample {shard.keys[position]!r} has a .cls that is not an "
                               f"integer ({rows[j].tobytes().rstrip(bytes(1))[:40]!r}); run "
                               f"`sslpipe verify {shard.path.parent}`")
        return torch.from_numpy(values)

    def _windows(self, named, count: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per view: (B, 4) (top, left, height, width) as fractions of the source, (B,) flips."""
        height_width = np.asarray(named["image_shape"].as_tensor())[:count, :2].astype(np.float64)
        windows, flips = [], []
        for i, view in enumerate(self.spec.views):
            if view.crop == "random":
                anchor = np.asarray(named[f"anchor{i}"].as_tensor())[:count].astype(np.float64)
                shape = np.asarray(named[f"shape{i}"].as_tensor())[:count].astype(np.float64)
            else:  # resize the shorter side to `resize_to`, then the central `size` square
                side = view.size / view.resize_to * height_width.min(axis=1, keepdims=True)
                shape = np.minimum(side, height_width)
                anchor = (height_width - shape) / 2
            relative = np.concatenate([anchor, shape], axis=1) / np.tile(height_width, 2)
            windows.append(torch.from_numpy(relative).float().to(self.device))
            flip = (np.asarray(named[f"flip{i}"].as_tensor())[:count].reshape(-1).astype(bool)
                    if view.flip > 0 else np.zeros(count, dtype=bool))
            flips.append(torch.from_numpy(flip).to(self.device))
        return windows, flips


class _Ahead:
    """The pipeline of `epoch`, built by `build()` and run for its first batch on a thread of its
    own (DALI works on its threads meanwhile), on `stream` for a GPU pipeline. After `join()`:
    `pipe`, `names` and the first batch's `outputs`; or `error`, raised at the epoch boundary as is;
    or `dali_error`, DALI's failure on the first batch."""

    def __init__(self, epoch: int, build, stream):
        self.epoch, self.stream = epoch, stream
        self.pipe = self.names = self.outputs = self.error = self.dali_error = None
        self._thread = threading.Thread(target=self._work, args=(build,), name=f"sslpipe-epoch-{epoch}")
        self._thread.start()

    def _work(self, build) -> None:
        try:
            pipe, self.names = build()
        except Exception as e:
            self.error = e
            return
        try:
            pipe.schedule_run()  # as `ViewLoader._run`: DALI's prefetch, `prefetch` batches
            self.outputs = pipe.outputs(self.stream)
        except RuntimeError as e:
            self.dali_error = e.with_traceback(None)  # no frame of this thread keeps `pipe` alive
        self.pipe = pipe

    def join(self) -> None:
        self._thread.join()


def _size_groups(spec: PipelineSpec) -> list[tuple[int, list[int]]]:
    """Views of one size are augmented together as one tensor, e.g. SwAV's six 96-px views: one
    photometric call per group instead of one per view; views whose ops need different static
    settings (two blur kernel sizes) go to separate groups."""
    groups: dict[tuple, list[int]] = {}
    for i, view in enumerate(spec.views):
        shared = tuple(OPS[key].stage_key(view.op(key), view.size) if view.op(key) else None for key in OPS)
        groups.setdefault((view.size, shared), []).append(i)
    return [(size, members) for (size, _), members in groups.items()]


def _copy(tensor_list, target: torch.Tensor) -> None:
    """DALI's uniform batch (B, H, W, 3) into the torch slice `target`, on DALI's order of work."""
    if target.is_cuda:
        from nvidia.dali.plugin.pytorch import feed_ndarray
        feed_ndarray(tensor_list.as_tensor(), target, cuda_stream=torch.cuda.current_stream(target.device))
    else:
        target.numpy()[...] = np.asarray(tensor_list.as_tensor())


def _device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SslpipeError(f"device {str(device)!r} asked for, but PyTorch sees no CUDA GPU on this "
                               f"machine: use device='cpu' (the same pipeline on DALI's CPU operators)")
        return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
    if device.type != "cpu":
        raise SslpipeError(f"device must be 'cpu' or 'cuda[:N]', got {str(device)!r}")
    return device


def _place(rank, world_size) -> tuple[int, int]:
    rank = distributed.rank() if rank is None else rank
    world_size = distributed.world_size() if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise SslpipeError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return rank, world_size


# DALI threads per GPU by default. With the mixed decoder the CPU threads read the tars, parse the
# JPEG headers and Huffman-decode only the images the hardware decoder does not take (1 -
# hw_decoder_load of them, and progressive ones; the GPU does the rest). A whole CPU decode of a
# 0.17-MP, ~90 KB fixture JPEG took ~2 ms on one core of a 2-core CI machine, so 8 threads keep up
# with ~4,000 images/s even on a GPU without a hardware decoder; more threads only add their
# decoder buffers (DecoderOptions: device and pinned memory per thread).
GPU_THREADS = 8


def _default_threads(device: torch.device) -> int:
    """This process's share of the cores; on a GPU at most `GPU_THREADS`."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    share = max(1, cores // max(1, per_node))
    return min(share, GPU_THREADS) if device.type == "cuda" else share
