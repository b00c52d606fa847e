"""Augmentation pipelines: spec (YAML) -> DALI stage (read, decode, crop, flip) -> photometric
stage (jitter, grayscale, blur, solarize, normalize) -> batches of views on the device.

    from sslpipe.pipeline import ViewLoader

    loader = ViewLoader("simclr", "shards/train-*.tar", batch_size=256, device="cuda")
"""

from sslpipe.pipeline.batch import Batch, SizeGroup
from sslpipe.pipeline.dali_stage import DecoderOptions
from sslpipe.pipeline.loader import ViewLoader
from sslpipe.pipeline.photometric import PhotometricStage
from sslpipe.pipeline.spec import PipelineSpec, ViewSpec, load_spec, parse_spec

__all__ = ["Batch", "DecoderOptions", "PhotometricStage", "PipelineSpec", "SizeGroup", "ViewLoader",
           "ViewSpec", "load_spec", "parse_spec"]
