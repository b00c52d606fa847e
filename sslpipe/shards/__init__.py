"""WebDataset shards for DALI: convert datasets into them, and verify them.

    from sslpipe.shards import ConvertOptions, convert_split, imagenet_splits, verify_output

    for source in imagenet_splits("/data/imagenet", ["train", "val"]):
        convert_split(source, "/data/imagenet-shards", ConvertOptions(seed=0), workers=16)
    reports = verify_output("/data/imagenet-shards")
"""

from sslpipe.shards.convert import ConvertOptions, ConvertResult, convert_split
from sslpipe.shards.folder import folder_split
from sslpipe.shards.imagenet import LabelFiles, imagenet_splits
from sslpipe.shards.images import ImagePolicy
from sslpipe.shards.manifest import Manifest
from sslpipe.shards.verify import verify_output

__all__ = ["ConvertOptions", "ConvertResult", "ImagePolicy", "LabelFiles", "Manifest", "convert_split",
           "folder_split", "imagenet_splits", "verify_output"]
