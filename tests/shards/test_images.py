import io

import numpy as np
import pytest
from PIL import Image

from sslpipe.shards.images import ImagePolicy, Prepared, Rejected, prepare_bytes, prepare_image

PHOTO = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)


def encode(mode="RGB", fmt="JPEG", **kwargs):
    out = io.BytesIO()
    Image.fromarray(PHOTO).convert(mode).save(out, fmt, **kwargs)
    return out.getvalue()


def broken_png():
    data = bytearray(encode(fmt="PNG"))
    start = data.find(b"IDAT") + 20
    data[start:start + 20] = bytes(20)  # zeros inside the compressed pixel stream
    return bytes(data)


def decoded(prepared: Prepared) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.jpeg))
    image.load()
    return image


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_baseline_rgb_and_gray_jpegs_keep_their_bytes(mode):
    data = encode(mode, quality=90)
    assert prepare_bytes(data, ImagePolicy()) == Prepared(data)


@pytest.mark.parametrize("data, reason", [
    (encode("CMYK"), "mode:CMYK"),
    (encode(fmt="PNG"), "format:PNG"),
    (encode("RGBA", fmt="PNG"), "format:PNG"),
    (encode("P", fmt="GIF"), "format:GIF"),
])
def test_other_images_are_reencoded_as_baseline_rgb_jpeg(data, reason):
    result = prepare_bytes(data, ImagePolicy(quality=90))
    assert isinstance(result, Prepared) and result.reencoded == reason
    image = decoded(result)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (400, 300))
    assert not image.info.get("progressive")


def test_progressive_jpegs_are_kept_unless_baseline_is_asked():
    data = encode(progressive=True)
    assert prepare_bytes(data, ImagePolicy()) == Prepared(data)
    result = prepare_bytes(data, ImagePolicy(baseline=True))
    assert result.reencoded == "progressive"
    assert not decoded(result).info.get("progressive")


@pytest.mark.parametrize("data, reason", [
    (encode()[:3000], "truncated"),
    (encode()[:-2], "truncated"),
    (broken_png(), "corrupt"),
    (b"just some text", "not_image"),
])
def test_broken_files_are_rejected_with_a_reason(data, reason):
    result = prepare_bytes(data, ImagePolicy())
    assert isinstance(result, Rejected) and result.reason == reason and result.detail


def test_empty_and_unreadable_files(tmp_path):
    (tmp_path / "empty.JPEG").write_bytes(b"")
    assert prepare_image(tmp_path / "empty.JPEG", ImagePolicy()).reason == "empty"
    assert prepare_image(tmp_path / "missing.JPEG", ImagePolicy()).reason == "unreadable"


@pytest.mark.parametrize("policy, size", [
    (ImagePolicy(short_side=150), (200, 150)),
    (ImagePolicy(max_side=200), (200, 150)),
    (ImagePolicy(short_side=200, max_side=240), (240, 180)),
    (ImagePolicy(short_side=300), None),   # never upscales: kept as it is
    (ImagePolicy(max_side=400), None),
])
def test_downscaling(policy, size):
    data = encode(quality=90)
    result = prepare_bytes(data, policy)
    if size is None:
        assert result == Prepared(data)
    else:
        assert result.reencoded == "resized" and decoded(result).size == size


def test_reencoding_applies_the_exif_orientation_that_decoders_would_apply():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = io.BytesIO()
    Image.fromarray(PHOTO).convert("CMYK").save(out, "JPEG", exif=exif)
    assert decoded(prepare_bytes(out.getvalue(), ImagePolicy())).size == (300, 400)


def test_16_bit_grayscale_keeps_its_tones():
    ramp = np.linspace(0, 65535, 400, dtype=np.uint16)[None, :].repeat(300, 0)
    out = io.BytesIO()
    Image.fromarray(ramp).save(out, "PNG")
    result = prepare_bytes(out.getvalue(), ImagePolicy(quality=100))
    pixels = np.asarray(decoded(result))[..., 0].astype(int)
    assert result.reencoded == "format:PNG"
    assert abs(pixels[0, 200] - 128) <= 2 and pixels[0, 0] <= 2 and pixels[0, -1] >= 253  # not clipped


def test_floating_point_images_are_rejected():
    out = io.BytesIO()
    Image.fromarray(PHOTO[..., 0].astype(np.float32)).save(out, "TIFF")
    assert prepare_bytes(out.getvalue(), ImagePolicy()).reason == "unsupported"


def test_an_image_too_wide_for_jpeg_is_rejected_not_a_crash():
    out = io.BytesIO()
    Image.new("L", (70_000, 1)).save(out, "PNG")
    result = prepare_bytes(out.getvalue(), ImagePolicy())
    assert result.reason == "unsupported" and "cannot re-encode as JPEG" in result.detail


def test_camera_mpo_jpegs_keep_their_bytes():
    out = io.BytesIO()
    frames = [Image.fromarray(PHOTO), Image.fromarray(PHOTO[::-1])]
    frames[0].save(out, "MPO", save_all=True, append_images=frames[1:])
    assert prepare_bytes(out.getvalue(), ImagePolicy()) == Prepared(out.getvalue())
