"""The DALI stage: read the shards, decode each JPEG, take every view's crop and flip.

One pipeline reads one epoch of one rank: the loader builds a new one per epoch with that
epoch's shard order, so an epoch always starts at the beginning of the rank's samples (a reader
that loops on its own drifts by the dropped remainder each epoch) and DALI's random state is a
function of (seed, epoch, rank). Its outputs, per batch, by name: one uint8 HxWx3 tensor list
per view (on the GPU for `device="gpu"`), the raw `.cls` bytes, each sample's source
(`shard.tar:offset:key.jpg`, from which the loader derives the global sample index) and, when
asked, each view's crop window and flip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sslpipe.pipeline.spec import PipelineSpec, ViewSpec

DecodeMode = Literal["once", "roi"]


@dataclass(frozen=True)
class DecoderOptions:
    """Settings of DALI's `mixed` (GPU) JPEG decoder; the CPU decoder ignores them.

    `hw_decoder_load` is the share of images sent to the hardware JPEG decoder (A100/H100) rather
    than the CUDA one; the hints preallocate its buffers for images up to that size, and the
    paddings grow device and pinned host buffers in steps to avoid reallocations. `affine` pins
    the decoder's own threads to cores.

    The defaults are those of DALI's ImageNet ResNet-50 examples (docs/examples/use_cases/ in
    DALI's repository): the paddings of the PyTorch one, the hints of the TensorFlow one (its
    largest ImageNet image, 5980x6430), so that no ImageNet JPEG makes the decoder reallocate
    mid-epoch. Their cost, per decoder operator (`decode="roi"` has one per random view): DALI
    preallocates, per pipeline thread, one device buffer and two pinned host buffers of the
    paddings' size, 201 MiB + 2 x 134 MiB; at the 8 threads a CUDA loader takes by default, 1.6 GiB
    of GPU memory and 2.1 GiB of pinned host memory per GPU. The hints size the hardware decoder's
    pool for a whole batch (nvImageCodec's `preallocate_batch_size` is the batch size), of a size
    DALI does not document. Where memory is short (or the shards were converted with
    `--max-side`), smaller values only cost reallocations; DALI's own defaults are 0 hints and
    16 MiB / 8 MiB paddings.
    """

    hw_decoder_load: float = 0.9
    preallocate_width_hint: int = 5980
    preallocate_height_hint: int = 6430
    device_memory_padding: int = 211025920
    host_memory_padding: int = 140544512
    # DALI's default is True: the mixed decoder's own thread pool then narrows every thread to the
    # cores NVML deems closest to the GPU (or one core each of DALI_AFFINITY_MASK), so on a node
    # shared by several ranks their threads pile onto the same cores instead of the cores Slurm or
    # the launcher gave each rank.
    affine: bool = False

    def __post_init__(self):
        if not 0.0 <= self.hw_decoder_load <= 1.0:
            raise ValueError(f"hw_decoder_load must be in [0, 1], got {self.hw_decoder_load}")

    def dali_args(self) -> dict:
        """The keyword arguments of DALI's mixed decoders (`decoders.image`, `image_slice`, ...)."""
        return dict(hw_decoder_load=self.hw_decoder_load, preallocate_width_hint=self.preallocate_width_hint,
                    preallocate_height_hint=self.preallocate_height_hint,
                    device_memory_padding=self.device_memory_padding,
                    host_memory_padding=self.host_memory_padding, affine=self.affine)


@dataclass(frozen=True)
class EpochPlan:
    """What one rank's pipeline reads in one epoch."""

    tars: tuple[str, ...]      # this epoch's shard order (the same on every rank)
    indexes: tuple[str, ...]
    rank: int
    world_size: int
    shuffle: bool              # shuffle samples inside a buffer of `shuffle_buffer`
    shuffle_buffer: int
    seed: int                  # DALI's seed for this (seed, epoch, rank)


def build_pipeline(spec: PipelineSpec, plan: EpochPlan, batch_size: int, device: Literal["cpu", "gpu"],
                   device_id: int | None, num_threads: int, decode: DecodeMode = "once",
                   decoder: DecoderOptions = DecoderOptions(), prefetch: int = 2,
                   checkpoint: str | None = None, windows: bool = False) -> tuple[object, list[str]]:
    """A built DALI pipeline and the names of its outputs, in order: `view0`, `view1`, ... (one per
    view of `spec.views`), `labels`, `sources`; with `windows`, also per view `flip<i>` and, for
    random crops, `anchor<i>` and `shape<i>` (the crop window in source pixels, (y, x) and (h, w)),
    and `image_shape` (H, W, C) of every source image.

    `decode="once"` decodes each image once and crops it per view; `"roi"` decodes only each
    random view's region, once per view. A random crop is DALI's fused `random_resized_crop`
    (`image_random_crop` for ROI decoding); with `windows` it is the same distribution drawn by
    `random_crop_generator`, whose window is then cut out by `resize` (`image_slice` for ROI
    decoding), so the window can be returned. `checkpoint` (from `pipeline.checkpoint()`) resumes
    a pipeline of the same plan where that one stood.
    """
    from nvidia.dali import fn, pipeline_def, types  # heavy import, only when a loader starts

    interp = {"nearest": types.INTERP_NN, "bilinear": types.INTERP_LINEAR,
              "bicubic": types.INTERP_CUBIC, "lanczos": types.INTERP_LANCZOS3}
    decode_device = "mixed" if device == "gpu" else "cpu"
    gpu_hints = decoder.dali_args() if device == "gpu" else {}

    def center(image, view: ViewSpec):
        image = fn.resize(image, resize_shorter=view.resize_to, interp_type=interp[view.interpolation])
        return fn.crop(image, crop=(view.size, view.size))

    def fused_random(decoded, jpegs, view: ViewSpec):
        if decode == "roi":
            image = fn.decoders.image_random_crop(jpegs, device=decode_device, output_type=types.RGB,
                                                  random_area=view.scale, random_aspect_ratio=view.ratio,
                                                  **gpu_hints)
            return fn.resize(image, size=(view.size, view.size), interp_type=interp[view.interpolation])
        return fn.random_resized_crop(decoded(), size=(view.size, view.size), random_area=view.scale,
                                      random_aspect_ratio=view.ratio, interp_type=interp[view.interpolation])

    def windowed_random(decoded, jpegs, image_shape, view: ViewSpec):
        anchor, shape = fn.random_crop_generator(image_shape, random_area=view.scale,
                                                 random_aspect_ratio=view.ratio)
        if decode == "roi":
            image = fn.decoders.image_slice(jpegs, anchor, shape, device=decode_device, output_type=types.RGB,
                                            axes=[0, 1], normalized_anchor=False, normalized_shape=False,
                                            **gpu_hints)
            image = fn.resize(image, size=(view.size, view.size), interp_type=interp[view.interpolation])
        else:
            start = fn.cast(anchor, dtype=types.FLOAT)
            image = fn.resize(decoded(), size=(view.size, view.size), interp_type=interp[view.interpolation],
                              roi_start=start, roi_end=start + fn.cast(shape, dtype=types.FLOAT))
        return image, anchor, shape

    # set_affinity=False (DALI 2.4's default, said so that a new default cannot pin): pinning the
    # pipeline's threads to the cores NVML picks for the GPU fights Slurm's and torchrun's binding.
    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=plan.seed,
                  prefetch_queue_depth=prefetch, enable_checkpointing=True, set_affinity=False)
    def epoch_pipeline():
        jpegs, labels = fn.readers.webdataset(
            paths=list(plan.tars), index_paths=list(plan.indexes), ext=["jpg", "cls"], name="reader",
            shard_id=plan.rank, num_shards=plan.world_size, random_shuffle=plan.shuffle,
            initial_fill=plan.shuffle_buffer, pad_last_batch=True, missing_component_behavior="error")
        # Zero-padded to the batch's longest: one (B, width) uint8 CPU array each, which the loader
        # parses without a loop per sample.
        sources = fn.pad(fn.get_property(jpegs, key="source_info"), fill_value=0)
        labels = fn.pad(labels, fill_value=0)
        cache = {}

        def decoded():  # decoded once, on first use, for every view that crops the whole image
            if "image" not in cache:
                cache["image"] = fn.decoders.image(jpegs, device=decode_device, output_type=types.RGB,
                                                   **gpu_hints)
            return cache["image"]

        image_shape = fn.peek_image_shape(jpegs) if windows else None
        views, extras = [], {}
        for i, view in enumerate(spec.views):
            if view.crop == "center":
                image = center(decoded(), view)
            elif windows:
                image, anchor, shape = windowed_random(decoded, jpegs, image_shape, view)
                extras[f"anchor{i}"], extras[f"shape{i}"] = anchor, shape
            else:
                image = fused_random(decoded, jpegs, view)
            if view.flip > 0:
                coin = fn.random.coin_flip(probability=view.flip)
                image = fn.flip(image, horizontal=coin)
                if windows:
                    extras[f"flip{i}"] = coin
            views.append(image)
        if windows:
            extras["image_shape"] = image_shape
        names[:] = [*(f"view{i}" for i in range(len(views))), "labels", "sources", *extras]
        return (*views, labels, sources, *extras.values())

    names: list[str] = []  # filled when DALI traces the graph
    pipe = epoch_pipeline(checkpoint=checkpoint) if checkpoint else epoch_pipeline()
    pipe.build()
    return pipe, names
