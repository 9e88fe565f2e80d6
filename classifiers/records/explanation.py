"""An explanation of one image's score: a heatmap on the model's input canvas and what it
was drawn from (workflows/explain.py makes it; presentation/heatmaps.py draws it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from feature_extractor.imaging.decode import PreparedImage

METHODS = ("occlusion", "gradcam", "lesion")  # --explain-method: workflows/explain.py

@dataclass
class Explanation:
    path: str
    p_covid: float
    heatmap: np.ndarray      # (H, W) on the input canvas; occlusion: drop in P(COVID), signed
    method: str
    prepared: PreparedImage  # the slice and its crop, to draw the map where it belongs
    involved: str | None = None  # lesion maps: "12.3% of lung involved"
