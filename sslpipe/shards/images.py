"""Decide, per source file, whether its bytes go into a shard as they are, re-encoded, or not at all.

Every image written must decode to 3-channel RGB with DALI's decoders, and the GPU hardware
decoder handles baseline JPEG only. So: baseline RGB/grayscale JPEGs keep their original bytes
(no generation loss); CMYK JPEGs, other formats behind a `.JPEG` name (ImageNet's n02105855_2933
is a PNG), 16-bit images and, when asked, progressive JPEGs are re-encoded as baseline RGB JPEG.
Files that do not fully decode (empty, truncated, not an image) are rejected with a reason, never
written. The converter decodes what it will write with DALI itself (`convert.py`), so for the
kept JPEGs that DALI decode is the check, and Pillow decodes only those DALI refuses: truncated
ones are then rejected, the others re-encoded from Pillow's pixels.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's names for a JPEG stream; MPO is a camera JPEG with extra frames appended.
JPEG_FORMATS = ("JPEG", "MPO")


@dataclass(frozen=True)
class ImagePolicy:
    """How the converter treats images; part of the options recorded in the manifest."""

    quality: int = 95            # JPEG quality of re-encoded images
    baseline: bool = False       # also re-encode progressive JPEGs (for the GPU hardware decoder)
    short_side: int | None = None  # downscale so that the shorter side is at most this
    max_side: int | None = None    # downscale so that the longer side is at most this


@dataclass(frozen=True)
class Prepared:
    """The JPEG bytes to write. `reencoded` names why they differ from the source ('' = kept)."""

    jpeg: bytes
    reencoded: str = ""


@dataclass(frozen=True)
class Rejected:
    """A source file that is not written, with a short reason code and the details."""

    reason: str   # unreadable, empty, not_image, truncated, corrupt, too_large, unsupported, undecodable
    detail: str


def prepare_image(path: Path, policy: ImagePolicy, check_pixels: bool = True) -> Prepared | Rejected:
    """Read one source file and return what to write for it, or why it is rejected.

    `check_pixels=False` skips the full decode of JPEGs whose bytes are kept (their headers are
    still read): for a caller that decodes them next anyway, as the converter does with DALI.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        return Rejected("unreadable", f"{type(e).__name__}: {e.strerror or e}")
    return prepare_bytes(data, policy, check_pixels=check_pixels)


def prepare_bytes(data: bytes, policy: ImagePolicy, force: str = "",
                  check_pixels: bool = True) -> Prepared | Rejected:
    """Like `prepare_image`, for bytes in memory; `force` re-encodes for that reason in any case."""
    if not data:
        return Rejected("empty", "zero-byte file")
    image = _open(data)
    if isinstance(image, Rejected):
        return image
    why = force or _reencode_reason(image, policy)
    # A JPEG without its end-of-image marker is most likely truncated: Pillow checks it (quietly)
    # rather than DALI, which would log an error for it.
    if not why and not check_pixels and data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return Prepared(data)
    problem = _load(image)
    if problem:
        return problem
    if not why:
        return Prepared(data)
    try:
        return Prepared(_reencode(image, policy), why)
    except (OSError, ValueError) as e:  # e.g. sides beyond JPEG's 65,500 pixels
        return Rejected("unsupported", f"cannot re-encode as JPEG ({why}): {type(e).__name__}: {e}")


def _open(data: bytes) -> Image.Image | Rejected:
    """The image with its header read (format, mode, size), pixels not yet decoded."""
    with warnings.catch_warnings():
        # Pillow warns (rather than fails) on some oddities; keep the progress bar clean.
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            return Rejected("not_image", "not a recognised image format")
        except Image.DecompressionBombError as e:
            return Rejected("too_large", str(e))
        except (OSError, SyntaxError, ValueError) as e:
            return Rejected("corrupt", f"{type(e).__name__}: {e}")
    if image.mode == "F":
        return Rejected("unsupported", "floating-point pixels have no defined 8-bit range")
    return image


def _load(image: Image.Image) -> Rejected | None:
    """Decode the pixels; truncated or corrupt data fails here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as e:
            reason = "truncated" if "truncated" in str(e) else "corrupt"
            return Rejected(reason, f"{type(e).__name__}: {e}")
    return None


def _reencode_reason(image: Image.Image, policy: ImagePolicy) -> str:
    if image.format not in JPEG_FORMATS:
        return f"format:{image.format or 'unknown'}"
    if image.mode not in ("RGB", "L"):
        return f"mode:{image.mode}"
    if policy.baseline and image.info.get("progressive"):
        return "progressive"
    if _target_size(image.size, policy) != image.size:
        return "resized"
    return ""


def _reencode(image: Image.Image, policy: ImagePolicy) -> bytes:
    # DALI's decoders apply the EXIF orientation of the original; the re-encoded file has no
    # EXIF, so apply it here to keep what training sees unchanged.
    image = _to_rgb(ImageOps.exif_transpose(image))
    size = _target_size(image.size, policy)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=policy.quality)
    return out.getvalue()


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode.startswith("I"):
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 of 16 bits; convert() would clip.
        pixels = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(np.minimum(pixels >> 8, 255).astype(np.uint8))
    return image.convert("RGB")


def _target_size(size: tuple[int, int], policy: ImagePolicy) -> tuple[int, int]:
    """The (width, height) after downscaling by the policy; never upscales."""
    scale = 1.0
    if policy.short_side is not None:
        scale = min(scale, policy.short_side / min(size))
    if policy.max_side is not None:
        scale = min(scale, policy.max_side / max(size))
    if scale >= 1.0:
        return size
    return tuple(max(1, round(side * scale)) for side in size)
