"""What every benchmark script shares: the machine's description and writing its section of
docs/benchmarks.md (between the script's own markers, leaving the other sections alone), the
fixture shards they measure when given none, and a loader read across epochs."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(doc: Path, begin: str, end: str, section: str) -> None:
    """Replace the text between `begin` and `end` in `doc` by `section` (which holds both), or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    doc.write_text(text)


def fixture_shards(tmp: Path, per_class: int, quality: int = 90) -> str:
    """Shards of an ImageNet-like fixture built in `tmp`: 6 classes of real-photo baseline JPEGs
    of `quality` (90: ~90 KB; 94: ~110 KB, ImageNet's mean)."""
    from sslpipe.fixtures.imagenet import build_imagenet_fixture
    from sslpipe.shards import ConvertOptions, convert_split, imagenet_splits

    print(f"building a fixture of {6 * per_class} images (JPEG quality {quality}) ...", flush=True)
    build_imagenet_fixture(tmp / "imagenet", num_classes=6, train_per_class=per_class, val_per_class=1,
                           quirks=False, progress=True, quality=quality)
    for source in imagenet_splits(tmp / "imagenet", ["train"]):
        convert_split(source, tmp / "shards", ConvertOptions(shard_samples=100), workers=2, progress=False)
    return str(tmp / "shards" / "train-*.tar")


def mean_jpeg_kb(pattern: str) -> float:
    """The mean size of the `.jpg` members of the shards matching `pattern`, in KB (from their indexes)."""
    import glob

    from sslpipe.shards.writer import read_index

    sizes = [size for tar in glob.glob(pattern) for sample in read_index(Path(tar).with_suffix(".idx"))
             for ext, _, size, _ in sample if ext == "jpg"]
    return sum(sizes) / max(1, len(sizes)) / 1e3


def endless(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader
