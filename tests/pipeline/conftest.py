"""Shards for the pipeline tests, written once per session by the converter.

`coordinate_shards`: 120 small JPEGs whose red channel encodes x and green encodes y, so a
view's pixels tell which window of the source it shows (crop area, aspect, flip).
"""

import pytest
from pipeline_data import COORDINATE_IMAGES, coordinate_image

from sslpipe.shards import ConvertOptions, convert_split, folder_split


@pytest.fixture(scope="session")
def coordinate_shards(tmp_path_factory):
    """Pattern of 120 coordinate images in 3 classes, 6 shards of 23 or fewer (uneven sizes)."""
    root = tmp_path_factory.mktemp("coordinates")
    for i in range(COORDINATE_IMAGES):
        folder = root / "src" / f"class{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        coordinate_image(i).save(folder / f"img{i:03d}.jpg", quality=100, subsampling=0)
    convert_split(folder_split(root / "src"), root / "shards", ConvertOptions(shard_samples=23),
                  progress=False)
    return str(root / "shards" / "train-*.tar")
