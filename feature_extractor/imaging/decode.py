"""Decode image bytes to the RGB arrays a backbone expects.

The format is detected from the bytes, never from the file name: 34 COVID-CT files named
.png hold JPEG data. Every mode (L, RGB, RGBA, P, 16-bit, float) ends up as 8-bit RGB.
DICOM slices are converted to Hounsfield units (RescaleSlope/Intercept) and windowed to
the lungs (level -600, width 1500 by default) before the same path.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from covidct_core.errors import CovidCTError

if TYPE_CHECKING:
    from ..lungs.crop import SliceCrop

MIN_SIDE = 8  # smaller than this carries no anatomy; resizing it up would only invent pixels

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"})
LUNG_WINDOW = (-600.0, 1500.0)  # (level, width) in HU: the usual lung window, the DICOM default


def window_grey(hu: np.ndarray, window: Sequence[float] = LUNG_WINDOW) -> np.ndarray:
    """Hounsfield units seen through one (level, width) window: grey levels 0-255, float."""
    level, width = window
    return np.clip((hu - (level - width / 2)) / width, 0.0, 1.0) * 255.0


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


@dataclass(frozen=True)
class DicomPixels:
    """A DICOM slice's pixels as stored (middle frame of multi-frame files) and how to read them."""

    raw: np.ndarray          # the pixel array in its own integer type (small to keep)
    slope: float
    intercept: float
    colour: bool             # a colour secondary capture: display values, no Hounsfield units
    inverted: bool           # MONOCHROME1
    spacing_mm: tuple[float, float] | None = None       # PixelSpacing: between rows, between columns
    row_direction: tuple[float, float, float] | None = None  # ImageOrientationPatient's first three: a row's way

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.raw, dtype=np.float64)

    def hu(self) -> np.ndarray:
        if self.colour:
            raise ImageDecodeError("a colour DICOM (secondary capture) has no Hounsfield units")
        return self.values * self.slope + self.intercept


def _read_dicom(data: bytes) -> DicomPixels:
    """The slice's pixels (middle frame of multi-frame files); ImageDecodeError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as exc:
        raise ImageDecodeError(f"unreadable DICOM: {exc}") from None
    if "PixelData" not in ds:
        raise ImageDecodeError("DICOM file has no pixel data")
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom raises many kinds for missing codecs / bad data
        raise ImageDecodeError(f"cannot decode DICOM pixel data: {exc}") from None
    colour = int(ds.get("SamplesPerPixel", 1)) == 3
    if arr.ndim == (4 if colour else 3):  # multi-frame: the middle slice
        arr = arr[arr.shape[0] // 2]
    return DicomPixels(np.ascontiguousarray(arr), float(ds.get("RescaleSlope", 1) or 1),
                       float(ds.get("RescaleIntercept", 0) or 0), colour,
                       str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
                       _numbers(ds.get("PixelSpacing"), 2), _numbers(ds.get("ImageOrientationPatient"), 6, 3))


def _numbers(value, n: int, keep: int | None = None) -> tuple[float, ...] | None:
    """A multi-valued header number as floats (the first ``keep``), None when absent or malformed."""
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers[:keep or n] if len(numbers) == n and all(np.isfinite(numbers)) else None


def dicom_hu(data: bytes) -> np.ndarray:
    """Hounsfield units of a DICOM slice (RescaleSlope/Intercept); ImageDecodeError."""
    return _read_dicom(data).hu()


def _dicom_to_image(data: bytes | DicomPixels, window: tuple[float, ...]) -> Image.Image:
    pixels = data if isinstance(data, DicomPixels) else _read_dicom(data)
    if pixels.colour:  # secondary capture in colour: already display values
        return Image.fromarray(np.clip(pixels.values, 0, 255).astype(np.uint8), "RGB")
    hu = pixels.hu()
    inverted = pixels.inverted
    channels = []
    for level, width in zip(window[0::2], window[1::2]):  # one window: grey; three: one per channel
        scaled = window_grey(hu, (level, width))
        channels.append(np.round(255.0 - scaled if inverted else scaled).astype(np.uint8))
    if len(channels) == 1:
        return Image.fromarray(channels[0], "L")
    return Image.fromarray(np.stack(channels, axis=-1), "RGB")


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


def decode_image(data: bytes, size: tuple[int, int] | None = None,
                 window: tuple[float, ...] = LUNG_WINDOW, dicom_hint: bool = False) -> np.ndarray:
    """Decode bytes to a uint8 array of shape (height, width, 3), resized to ``size``.

    ``size`` is (height, width); ``window`` the DICOM (level, width) in HU; ``dicom_hint``
    reads files without the DICM preamble (named .dcm) as DICOM too. Raises ImageDecodeError
    with a specific reason.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if is_dicom(data) or dicom_hint:
        rgb = _dicom_to_image(data, window)
        if min(rgb.size) < MIN_SIDE:
            raise ImageDecodeError(f"image too small ({rgb.width}x{rgb.height} px; need at least "
                                   f"{MIN_SIDE} px a side)")
        return _resized(to_rgb(rgb), size)
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
    return _resized(rgb, size)


def _resized(rgb: Image.Image, size: tuple[int, int] | None) -> np.ndarray:
    if size is not None and (rgb.height, rgb.width) != tuple(size):
        rgb = rgb.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A 2D float map resized (bilinear) to ``size`` = (height, width)."""
    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize(
        (size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """An (H, W, 3) uint8 array resized to ``size`` = (height, width), as decode_image does."""
    if size is None or rgb.shape[:2] == tuple(size):
        return rgb
    return _resized(Image.fromarray(rgb, "RGB"), size)


@dataclass(frozen=True)
class PreparedImage:
    """A decoded slice and, with --crop lungs, its lung crop: what the backbone is shown."""

    original: np.ndarray               # (H, W, 3) uint8 at full resolution
    crop: "SliceCrop | None" = None

    @property
    def region(self) -> np.ndarray:
        return self.crop.image if self.crop is not None else self.original

    @property
    def crop_fallback(self) -> str | None:
        """Why lungs were asked for but the full image was used (None otherwise)."""
        return self.crop.reason if self.crop is not None and not self.crop.found else None

    def model_input(self, size: tuple[int, int] | None) -> np.ndarray:
        return resize_rgb(self.region, size)


def prepare_image(data: bytes, window: tuple[float, ...] = LUNG_WINDOW, dicom_hint: bool = False,
                  crop: str = "none") -> PreparedImage:
    """Decode (see decode_image) and crop: ``lungs`` to the lung field (``lungs-equalized``: with
    its histogram equalized), ``body`` to the body, padded square (a fixed field of view)."""
    return _prepared(decode_image(data, None, window, dicom_hint), crop)


def _prepared(original: np.ndarray, crop: str) -> PreparedImage:
    if crop == "none":
        return PreparedImage(original)
    if crop == "body":
        from ..lungs.body import crop_body

        return PreparedImage(original, crop_body(original))
    from ..lungs.crop import crop_lungs

    return PreparedImage(original, crop_lungs(original, equalize=crop == "lungs-equalized"))


# -- decode once ---------------------------------------------------------------------------
# A study's slice is read by the lung check, by each backbone and by the lesion map; a folder's
# image by each backbone. Its decoded pixels are kept (the DICOM's stored integers, an image's
# 8-bit RGB; read-only) for the next reader, least recently used first out, within a budget.
DECODE_BUDGET_BYTES = 768 * 2**20


class _DecodedPixels:
    """path (with its size and modification time) -> DicomPixels, RGB array, or the decoding error."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str, dicom_hint: bool):
        info = os.stat(path)
        key = (os.path.realpath(path), info.st_mtime_ns, info.st_size, dicom_hint)
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                value = self.entries[key]
                if isinstance(value, ImageDecodeError):
                    raise value
                return value
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            value = _decode_pixels(data, dicom_hint)
        except ImageDecodeError as exc:
            value = exc
        size = value.raw.nbytes if isinstance(value, DicomPixels) else getattr(value, "nbytes", 256)
        with self.lock:
            if key not in self.entries and size <= self.budget:
                self.entries[key] = value
                self.used += size
                while self.used > self.budget:
                    _, old = self.entries.popitem(last=False)
                    self.used -= old.raw.nbytes if isinstance(old, DicomPixels) else getattr(old, "nbytes", 256)
        if isinstance(value, ImageDecodeError):
            raise value
        return value


def _decode_pixels(data: bytes, dicom_hint: bool):
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    if is_dicom(data) or dicom_hint:
        pixels = _read_dicom(data)
        if min(pixels.raw.shape[:2]) < MIN_SIDE:
            height, width = pixels.raw.shape[:2]
            raise ImageDecodeError(f"image too small ({width}x{height} px; need at least {MIN_SIDE} px a side)")
        pixels.raw.setflags(write=False)
        return pixels
    rgb = decode_image(data)
    rgb.setflags(write=False)
    return rgb


DECODED = _DecodedPixels(DECODE_BUDGET_BYTES)


def set_decode_budget(budget_bytes: int) -> None:
    """How many bytes of decoded pixels this process keeps (the web service keeps few: each
    upload is read by one request only)."""
    with DECODED.lock:
        DECODED.budget = int(budget_bytes)
        while DECODED.used > DECODED.budget and DECODED.entries:
            _, old = DECODED.entries.popitem(last=False)
            DECODED.used -= old.raw.nbytes if isinstance(old, DicomPixels) else getattr(old, "nbytes", 256)


def read_pixels(path: str, dicom_hint: bool = False):
    """A file's decoded pixels, decoded once while they fit the budget: DicomPixels for DICOM
    (by content, or ``dicom_hint``), else an (H, W, 3) uint8 read-only array. ImageDecodeError or
    OSError."""
    return DECODED.get(str(path), dicom_hint)


def decode_file(path: str, size: tuple[int, int] | None = None, window: tuple[float, ...] = LUNG_WINDOW,
                dicom_hint: bool = False) -> np.ndarray:
    """decode_image of a file's bytes, through the decoded-pixels memo."""
    pixels = read_pixels(path, dicom_hint)
    if isinstance(pixels, DicomPixels):
        return _resized(to_rgb(_dicom_to_image(pixels, window)), size)
    return resize_rgb(pixels, size)


def prepare_file(path: str, window: tuple[float, ...] = LUNG_WINDOW, dicom_hint: bool = False,
                 crop: str = "none") -> PreparedImage:
    """prepare_image of a file's bytes, through the decoded-pixels memo."""
    return _prepared(decode_file(path, None, window, dicom_hint), crop)
