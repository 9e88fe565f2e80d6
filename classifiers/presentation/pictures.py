"""Pictures inline: an image array as a data: URI, and a thumbnail of it. Every page the tool
writes (the report, the study page) and the web service embed their pictures this way, so a
page works offline and can be mailed as one file."""
from __future__ import annotations

import base64
import io

import numpy as np

from feature_extractor.imaging.decode import resize_rgb

THUMB_SIDE = 128


def data_uri(image: np.ndarray, fmt: str = "JPEG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 82} if fmt == "JPEG" else {}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def thumbnail(image: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    scale = side / max(image.shape[:2])
    return resize_rgb(image, (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))))
