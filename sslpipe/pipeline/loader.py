"""The loader: batches of augmented views on the target device, for any PyTorch training loop.

    loader = ViewLoader("simclr", "shards/train-*.tar", batch_size=256, device="cuda")
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:               # batch.views: [ (256, 3, 224, 224) ] * 2
            ...

Stages, top to bottom: shard list (checked) -> DALI (read, decode, crop, flip; one pipeline
per epoch) -> uint8 views grouped by size -> photometric stage (the op table, Kornia transforms,
normalize) -> `Batch` (views, size groups, labels, global sample index, lazy keys).

Epoch semantics: every rank gets `len(loader)` batches per epoch, no sample twice in an epoch.
Training drops each rank's remainder (at most `batch_size` samples); evaluation (`train=False`)
keeps it, so a rank's last batch may be short (even empty when ranks differ by one sample).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from sslpipe import distributed, seeds
from sslpipe.errors import SslpipeError
from sslpipe.pipeline.batch import Batch, SizeGroup
from sslpipe.pipeline.dali_stage import DecodeMode, DecoderOptions, EpochPlan, build_pipeline
from sslpipe.pipeline.diagnose import diagnose_failure
from sslpipe.pipeline.ops import OPS
from sslpipe.pipeline.photometric import PhotometricStage
from sslpipe.pipeline.shardlist import SampleIndex, Shard, rank_range, resolve_shards
from sslpipe.pipeline.spec import PipelineSpec, differences, load_spec

STATE_VERSION = 2


class ViewLoader:
    """Augmented views of every image in WebDataset shards, cropped by DALI, augmented by torch ops.

    Args:
        spec: a `PipelineSpec`, a YAML path, or a shipped spec's name (`"simclr"`).
        shards: a glob or brace pattern (`"out/train-*.tar"`) or a list of tar paths, each with
            its DALI `.idx` beside it (as `sslpipe convert` writes them).
        batch_size: images per batch per rank (each gives one sample in every view).
        device: `"cpu"` (DALI CPU operators, the photometric ops on CPU tensors) or `"cuda"`/`"cuda:N"`
            (DALI mixed decoding with the hardware JPEG decoder, the photometric ops on the GPU).
        rank, world_size: this process's place; default from `torch.distributed` when initialized.
        seed: shard order, shuffle and augmentation randomness derive from (seed, epoch, rank).
        train: shuffle and drop each rank's last partial batch; `False` reads in order and keeps it.
        dtype, channels_last: of the returned views (float32 or bfloat16).
        normalize: `False` returns views in [0, 1] (for looking at them).
        decode: `"once"` (decode, then crop per view) or `"roi"` (decode each view's region).
        num_threads: DALI CPU threads (default: this process's share of the cores).
        shuffle_buffer: samples DALI shuffles among while reading (the shards are pre-shuffled).
        windows: also return each view's crop window and flip (`Batch.windows`, `Batch.flips`);
            random crops are then drawn by DALI's `random_crop_generator` (the same distribution
            as the fused `random_resized_crop`, other draws; its cost is in docs/benchmarks.md).
        size: rescale the spec to this size (`PipelineSpec.resized`), e.g. `eval` for 64-px images.
    """

    def __init__(self, spec: str | Path | PipelineSpec, shards, batch_size: int, *,
                 device: str | torch.device = "cpu", rank: int | None = None, world_size: int | None = None,
                 seed: int = 0, train: bool = True, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False, normalize: bool = True, decode: DecodeMode = "once",
                 decoder: DecoderOptions = DecoderOptions(), num_threads: int | None = None,
                 shuffle_buffer: int = 4096, prefetch: int = 2, windows: bool = False,
                 size: int | None = None):
        self.spec = load_spec(spec, size)
        self.device = _device(device)
        self.rank, self.world_size = _place(rank, world_size)
        if batch_size < 1:
            raise SslpipeError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in ("once", "roi"):
            raise SslpipeError(f"decode must be 'once' or 'roi', got {decode!r}")
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise SslpipeError(f"dtype must be torch.float32, bfloat16 or float16, got {dtype}")
        self.shards: list[Shard] = resolve_shards(shards)
        self.batch_size, self.seed, self.train = batch_size, seed, train
        self.decode, self.decoder, self.prefetch = decode, decoder, prefetch
        self.shuffle_buffer, self.windows = shuffle_buffer, windows
        self.num_threads = num_threads or _default_threads()
        self.samples = SampleIndex(self.shards)
        self.num_samples = len(self.samples)
        self._len = self._batches_per_epoch()
        self._groups = _size_groups(self.spec)
        try:
            self._stages = [PhotometricStage([self.spec.views[i] for i in members], batch_size, self.device,
                                             normalize=normalize, dtype=dtype, channels_last=channels_last)
                            for _, members in self._groups]
        except ValueError as e:
            raise SslpipeError(f"{self.spec.source}: {e}") from None
        self.epoch, self._position = 0, 0
        self._pipe, self._pipe_epoch, self._checkpoint = None, None, None
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

    def __iter__(self):
        """The remaining batches of the current epoch; the epoch then advances by one."""
        self._check_usable()
        if self._position == self._len:  # the last batch was taken, but the loop stopped before the end
            self.epoch, self._position, self._pipe = self.epoch + 1, 0, None
        if self._pipe is None or self._pipe_epoch != self.epoch:
            self._pipe, self._pipe_epoch = self._build(self.epoch, self._checkpoint), self.epoch
            self._checkpoint = None
        while self._position < self._len:
            outputs = self._run()
            batch = self._batch(outputs, self._position)
            self._position += 1
            yield batch
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

    def _build(self, epoch: int, checkpoint: str | None):
        try:
            pipe, self._outputs = build_pipeline(
                self.spec, self._plan(epoch), self.batch_size, "gpu" if self.device.type == "cuda" else "cpu",
                self.device.index if self.device.type == "cuda" else None, self.num_threads, self.decode,
                self.decoder, self.prefetch, checkpoint, self.windows)
            return pipe
        except RuntimeError as e:
            raise SslpipeError(f"DALI could not start the pipeline of {self.spec.source}: {e}") from None

    def _check_usable(self) -> None:
        if self._failed:
            raise SslpipeError(f"this loader stopped on an error ({self._failed}); its position is lost: "
                               f"resume from a saved state_dict() in a new loader")

    def _run(self):
        try:
            if self.device.type == "cuda":
                # Outputs ordered on torch's stream, not host-synchronous. The previous batch's
                # outputs are kept alive one batch longer, until well after their copies were queued.
                outputs = self._pipe.run(torch.cuda.current_stream(self.device))
                self._held = outputs
                return outputs
            return self._pipe.run()
        except RuntimeError as e:
            self._pipe = None  # a failed DALI pipeline cannot run again
            error = diagnose_failure(self.shards, self._plan(self.epoch), self._position, self.batch_size,
                                     self.prefetch, str(e))
            self._failed = str(error)
            raise error from None

    def _batch(self, outputs, position: int) -> Batch:
        named = dict(zip(self._outputs, outputs))
        count = self.batch_size
        if not self.train:  # the padded tail of the last batch repeats a sample: cut it off
            start, stop = rank_range(self.num_samples, self.rank, self.world_size)
            count = max(0, min(count, stop - start - position * self.batch_size))
        index = np.array([self.samples.of_source(np.asarray(named["sources"].at(j)).tobytes().decode())
                          for j in range(count)], dtype=np.int64)
        labels = self._labels(named["labels"], index)
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

    def _labels(self, labels, index: np.ndarray) -> torch.Tensor:
        values = []
        for j in range(len(index)):
            text = np.asarray(labels.at(j)).tobytes()
            try:
                values.append(int(text))
            except ValueError:
                shard, position = self.samples.locate(int(index[j]))
                self._pipe = None  # the batch is lost: no position to go on from
                self._failed = (f"{shard.path}: sample {shard.keys[position]!r} has a .cls that is not "
                                f"an integer")
                raise SslpipeError(f"{self._failed} ({text[:40]!r}); run `sslpipe verify "
                                   f"{shard.path.parent}`") from None
        return torch.tensor(values, dtype=torch.int64)

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


def _default_threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # set by torchrun and accelerate launch
    return max(1, cores // max(1, per_node))
