import io

import numpy as np
import pytest
from PIL import Image

from feature_extractor.imaging.decode import ImageDecodeError, decode_image


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_format_is_detected_from_content_not_name(tmp_path):
    img = Image.fromarray(np.full((40, 50, 3), 120, np.uint8))
    path = tmp_path / "really_a_jpeg.png"  # as 34 COVID-CT files are
    path.write_bytes(encode(img, "JPEG"))
    arr = decode_image(path.read_bytes(), (32, 32))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    assert abs(int(arr.mean()) - 120) <= 3


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "CMYK"])
def test_every_mode_becomes_rgb(mode):
    base = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1)))
    img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    arr = decode_image(encode(img, fmt))
    assert arr.shape == (48, 64, 3)
    assert arr[:, -1].mean() > arr[:, 0].mean()  # the gradient survives


def test_sixteen_bit_is_scaled_not_clipped():
    values = np.linspace(1000, 4000, 64 * 32).reshape(32, 64).astype(np.uint16)
    arr = decode_image(encode(Image.fromarray(values)))
    assert arr.min() == 0 and arr.max() == 255  # the full 16-bit range maps to 0..255
    assert len(np.unique(arr[..., 0])) > 200    # not collapsed by clipping at 255


def test_transparent_background_becomes_black():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., :3] = 255  # white but fully transparent
    arr = decode_image(encode(Image.fromarray(rgba, "RGBA")))
    assert arr.max() == 0


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is plain text, not a JPEG", "not a recognised image format"),
    (bytes(range(256)) * 10, "not a recognised image format"),
])
def test_unreadable_bytes_give_specific_reasons(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_truncated_png_is_reported():
    data = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))
    with pytest.raises(ImageDecodeError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_tiny_image_is_refused():
    with pytest.raises(ImageDecodeError, match="too small"):
        decode_image(encode(Image.new("L", (1, 1))))


def test_decompression_bomb_is_refused(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # a 200x200 image then counts as huge
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(encode(Image.new("L", (200, 200))))
