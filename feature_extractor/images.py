"""Decode image bytes to the RGB arrays a backbone expects.

The format is detected from the bytes, never from the file name: 34 COVID-CT files named
.png hold JPEG data. Every mode (L, RGB, RGBA, P, 16-bit, float) ends up as 8-bit RGB.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CovidCTError

MIN_SIDE = 8  # smaller than this carries no anatomy; resizing it up would only invent pixels

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})


class ImageDecodeError(CovidCTError):
    """One file that cannot be turned into an image; the message is the reason."""


def _to_uint8(img: Image.Image) -> Image.Image:
    """Scale high-bit-depth grey images to 8 bits by their own range (not by clipping)."""
    arr = np.asarray(img, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        img = _to_uint8(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent regions become black, as the background of a CT slice is.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode bytes to a uint8 array of shape (height, width, 3), resized to ``size``.

    ``size`` is (height, width). Raises ImageDecodeError with a specific reason.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # A declared size over PIL's limit is treated as a decompression bomb.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if min(width, height) < MIN_SIDE:
                    raise ImageDecodeError(
                        f"image too small ({width}x{height} px; need at least {MIN_SIDE} px a side)")
                img.load()
                rgb = to_rgb(img)
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"truncated or corrupt image data: {exc}") from None
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)
