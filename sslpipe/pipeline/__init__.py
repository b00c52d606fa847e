"""Augmentation pipelines: spec (YAML) -> DALI stage (read, decode, crop, flip) -> photometric
stage (jitter, grayscale, blur, solarize, normalize) -> batches of views on the device.

    from sslpipe.pipeline import ViewLoader

    loader = ViewLoader("simclr", "shards/train-*.tar", batch_size=256, device="cuda")
"""

from sslpipe.pipeline.dali_stage import DecoderOptions
from sslpipe.pipeline.loader import Batch, ViewLoader
from sslpipe.pipeline.photometric import PhotometricStage
from sslpipe.pipeline.spec import PipelineSpec, ViewSpec, load_spec, parse_spec

__all__ = ["Batch", "DecoderOptions", "PhotometricStage", "PipelineSpec", "ViewLoader", "ViewSpec",
           "load_spec", "parse_spec"]
