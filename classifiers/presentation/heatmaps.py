"""Heatmap images: the slice beside the slice with the regions that raised P(COVID).

Explanations (workflows/explain.py) live on the model's input canvas (the lung crop with
--crop lungs); these functions put them back onto the full slice.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np

from feature_extractor.imaging.dataset import printable_path
from feature_extractor.imaging.decode import resize_map, resize_rgb

from ..records.explanation import Explanation
from .plots import pyplot, save_figure


def explanation_filename(path: str | Path, root: str | Path | None = None) -> str:
    """A safe, unique PNG name for an image: its path below ``root`` with separators
    flattened, odd characters replaced, and a short checksum of the full path."""
    path = Path(path)
    try:
        rel = path.relative_to(root) if root else Path(path.name)
    except ValueError:
        rel = Path(path.name)
    text = printable_path(str(rel))
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace("/", "__"))[-120:].strip("._") or "image"
    return f"{stem}.{zlib.crc32(printable_path(str(path)).encode()):08x}.png"


def heat_on_slice(expl: Explanation) -> tuple[np.ndarray, np.ndarray]:
    """(slice RGB, heatmap of the same size) with the map placed in the crop's bounding box;
    NaN outside it. Only positive values (regions that raised P(COVID)) are kept."""
    original = expl.prepared.original
    h, w = original.shape[:2]
    top, left, bottom, right = expl.prepared.crop.bbox if expl.prepared.crop is not None else (0, 0, h, w)
    heat = expl.heatmap
    if expl.method == "lesion":  # already the full slice's size
        return original, heat.astype(np.float32)
    if expl.method == "occlusion":  # soften the patch grid's steps for display (sigma: half a stride)
        from scipy.ndimage import gaussian_filter

        heat = gaussian_filter(heat, sigma=max(1.0, 0.0625 * min(heat.shape)))
    crop = expl.prepared.crop
    if crop is not None and crop.inner is not None:  # a padded crop: drop the padding's part
        t, l, b, r = crop.inner
        heat = resize_map(heat, crop.image.shape[:2])[t:b, l:r]
    full = np.full((h, w), np.nan, np.float32)
    full[top:bottom, left:right] = resize_map(np.maximum(heat, 0), (bottom - top, right - left))
    return original, full


def _blend(base: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """Heat over a uint8 slice: colour and opacity grow with the value, zero stays clear."""
    import matplotlib

    norm = np.clip(np.nan_to_num(heat) / vmax, 0, 1)
    colours = matplotlib.colormaps["jet"](norm)[..., :3]
    alpha = 0.6 * norm[..., None]
    return np.round(255 * ((1 - alpha) * base.astype(np.float32) / 255 + alpha * colours)).astype(np.uint8)


def _vmax(heat: np.ndarray, method: str) -> float:
    """Colour scale top; for occlusion at least a 0.02 drop in P(COVID), so noise stays faint;
    probabilities of lesion on their own scale (0-1)."""
    if method == "lesion":
        return 1.0
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    return max(peak, 0.02 if method == "occlusion" else 1e-12)


def overlay_rgb(expl: Explanation, max_side: int | None = 160, within: np.ndarray | None = None) -> np.ndarray:
    """The slice with the heatmap blended in, scaled to ``max_side`` (None: full size); ``within``: a mask of
    the slice (its lungs) outside which nothing is shown."""
    original, heat = heat_on_slice(expl)
    if within is not None and within.shape == heat.shape:
        heat = np.where(within, heat, np.nan)
    if max_side:
        scale = max_side / max(original.shape[:2])
        size = (max(1, round(original.shape[0] * scale)), max(1, round(original.shape[1] * scale)))
        original, heat = resize_rgb(original, size), resize_map(np.nan_to_num(heat), size)
    return _blend(original, heat, _vmax(heat, expl.method))


def render(expl: Explanation, out: str | Path, label: str, threshold: float) -> Path:
    """A PNG: the slice (with the crop box) beside the slice with the heatmap; the title gives P(COVID)
    and its ``label`` at the model's ``threshold`` (workflows/scoring.label_of)."""
    import matplotlib

    plt = pyplot()
    original, heat = heat_on_slice(expl)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.8), dpi=110)
    left.imshow(original)
    if expl.prepared.crop is not None:
        top, lft, bottom, rgt = expl.prepared.crop.bbox
        colour = "lime" if expl.prepared.crop.found else "orange"
        left.add_patch(plt.Rectangle((lft - 0.5, top - 0.5), rgt - lft, bottom - top, fill=False,
                                     ec=colour, lw=1.5))
        kind = expl.prepared.crop.kind
        left.set_title(f"{kind} crop (what the model sees)" if expl.prepared.crop.found
                       else f"no {kind} found ({expl.prepared.crop.reason}): full image", fontsize=9)
    else:
        left.set_title("input slice", fontsize=9)
    vmax = _vmax(heat, expl.method)
    right.imshow(_blend(original, heat, vmax))
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, vmax), "jet")
    what = {"occlusion": "drop in P(COVID) when hidden", "lesion": "probability of lesion (segmentation network)"}.get(
        expl.method, "contribution to the logit vs the average training slice")
    fig.colorbar(scale, ax=right, fraction=0.046, pad=0.04).set_label(what, fontsize=8)
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    floor = 0.02 if expl.method == "occlusion" else 0.0
    if expl.method == "lesion":
        right.set_title(f"lesion map: {expl.involved}", fontsize=9)
    else:
        right.set_title(f"{expl.method}: regions that raised P(COVID)" if peak > floor else
                        f"{expl.method}: no single region raised P(COVID)"
                        + (f" by {floor:g} or more" if floor else ""), fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    name = printable_path(Path(expl.path).name)
    fig.suptitle(f"{name}   P(COVID) = {expl.p_covid:.3f} -> {label} (threshold {threshold:.2f})\n"
                 "Research use only, not for clinical diagnosis", fontsize=10)
    return save_figure(fig, Path(out))
