"""Which regions of a slice raised a model's COVID score: occlusion sensitivity and Grad-CAM.

Occlusion works for any classifier, the stacked ensemble included: a patch of the slice is
replaced by a heavily blurred copy of itself (texture and small marks such as arrows or
letters vanish, brightness stays), every backbone of the model re-extracts features for
all patch positions in batches, and the drop in P(COVID) is spread back over the pixels
each patch covered. Grad-CAM needs a linear head (a scaler and a linear model, e.g.
``--clf logreg``): the head's weights are folded into the backbone's graph and the class
activation map is read from every pooled feature map, in one backward pass.

Heatmaps live on the model's input canvas (the lung crop with --crop lungs); ``render``
maps them back onto the full slice.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from feature_extractor.cache import printable_path
from feature_extractor.errors import CovidCTError
from feature_extractor.extract import FeatureExtractor
from feature_extractor.images import PreparedImage, resize_rgb
from feature_extractor.weights import WeightsChoice

from .bundle import ModelBundle
from .predict import extractor_for

METHODS = ("occlusion", "gradcam")


@dataclass
class Explanation:
    path: str
    p_covid: float
    heatmap: np.ndarray      # (H, W) on the input canvas; occlusion: drop in P(COVID), signed
    method: str
    prepared: PreparedImage  # the slice and its crop, to draw the map where it belongs


def linear_head(estimator) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(w, b, centre): logit = X @ w + b in raw feature space, and the scaler's mean (the
    training mean of the features; zeros without a scaler). None when the model is not linear."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in estimator.steps if s not in (None, "passthrough")] \
        if isinstance(estimator, Pipeline) else [estimator]
    *scalers, last = steps
    coef = getattr(last, "coef_", None)
    if coef is None or np.ndim(coef) != 2 or coef.shape[0] != 1 or getattr(last, "kernel", "linear") != "linear":
        return None
    if not all(isinstance(s, StandardScaler) for s in scalers):
        return None
    w, b = coef[0].astype(np.float64), float(np.ravel(last.intercept_)[0])
    centre = np.zeros_like(w)
    for scaler in reversed(scalers):  # fold x' = (x - mean) / scale into w and b
        scale = scaler.scale_ if scaler.scale_ is not None else 1.0
        mean = scaler.mean_ if scaler.mean_ is not None else 0.0
        w = w / scale
        b -= float(np.sum(w * mean))
        centre = centre * scale + mean
    return w, b, centre


class ModelExplainer:
    """Explains a saved model's predictions, one image at a time.

    Parameters
    ----------
    bundle : the loaded model (any classifier, or the stack, for occlusion).
    method : "occlusion" (default, any classifier) or "gradcam" (linear heads only).
    patch : occlusion patch side as a fraction of the canvas side (default 1/4: a 7x7 grid
        of positions at half-patch stride, 49 forward passes per backbone and image).
    """

    def __init__(self, bundle: ModelBundle, features_dir: str | Path = "features", batch_size: int = 32,
                 weights: Mapping[str, WeightsChoice] | None = None, offline: bool | None = None,
                 method: str = "occlusion", patch: float = 0.25):
        if method not in METHODS:
            raise CovidCTError(f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}")
        self.bundle = bundle
        self.method = method
        self.patch = float(patch)
        self.extractors: list[FeatureExtractor] = [
            extractor_for(entry, features_dir, batch_size, (weights or {}).get(entry["name"]), offline)
            for entry in bundle.manifest["backbones"]]
        self.canvas_size = self.extractors[0].input_size
        self.head = linear_head(bundle.estimator)
        if method == "gradcam" and self.head is None:
            raise CovidCTError(
                f"Grad-CAM needs a linear head (e.g. --clf logreg); this model is "
                f"{bundle.manifest.get('classifier')!r}: use --explain-method occlusion")
        if method == "gradcam":
            for ex in self.extractors:  # refuse unsuitable pooling now, not after predicting
                _map_model(ex)

    # -- scoring --------------------------------------------------------------------------
    def scores(self, canvases: np.ndarray) -> np.ndarray:
        """P(COVID) of (N, H, W, 3) uint8 canvases, through every backbone of the model."""
        blocks = []
        for ex in self.extractors:
            images = canvases if ex.input_size == self.canvas_size else \
                np.stack([resize_rgb(c, ex.input_size) for c in canvases])
            # One batch: every image's occlusion set has the same size, so the compiled
            # function is traced once; one image alone runs eagerly (no tracing at all).
            blocks.append(ex.features_of(images, eager=len(images) == 1))
        return self.bundle.estimator.predict_proba(np.hstack(blocks))[:, 1]

    def explain(self, path: str | Path, prepared: PreparedImage | None = None) -> Explanation:
        """Raises ImageDecodeError or OSError for an unreadable file."""
        prepared = prepared or self.extractors[0].prepare(path)
        canvas = prepared.model_input(self.canvas_size)
        if self.method == "gradcam":
            p, heat = float(self.scores(canvas[None])[0]), self._gradcam(canvas)
        else:
            p, heat = self._occlusion(canvas)
        return Explanation(str(path), p, heat, self.method, prepared)

    # -- occlusion sensitivity ------------------------------------------------------------
    def occlusion_windows(self) -> list[tuple[int, int, int, int]]:
        h, w = self.canvas_size
        side = max(2, round(self.patch * min(h, w)))
        stride = max(1, side // 2)

        def starts(n: int) -> list[int]:
            s = list(range(0, max(1, n - side + 1), stride))
            return s if s[-1] + side >= n else s + [n - side]
        return [(y, x, min(h, y + side), min(w, x + side)) for y in starts(h) for x in starts(w)]

    def _occlusion(self, canvas: np.ndarray) -> tuple[float, np.ndarray]:
        from scipy.ndimage import gaussian_filter

        windows = self.occlusion_windows()
        side = windows[0][2] - windows[0][0]
        blurred = gaussian_filter(canvas.astype(np.float32), sigma=(side / 2, side / 2, 0))
        batch = np.repeat(canvas[None], len(windows) + 1, axis=0)
        for i, (t, l, b, r) in enumerate(windows, start=1):
            batch[i, t:b, l:r] = np.round(blurred[t:b, l:r]).astype(np.uint8)
        p = self.scores(batch)
        heat = np.zeros(canvas.shape[:2], np.float64)
        count = np.zeros_like(heat)
        for drop, (t, l, b, r) in zip(p[0] - p[1:], windows):
            heat[t:b, l:r] += drop
            count[t:b, l:r] += 1
        return float(p[0]), (heat / np.maximum(count, 1)).astype(np.float32)

    # -- Grad-CAM -------------------------------------------------------------------------
    def class_activation_maps(self, canvas: np.ndarray) -> tuple[list[np.ndarray], float]:
        """Per pooled feature map, each pixel's contribution to the logit, and the logit of
        the average training slice (the head's centre): logit = centre + sum of map means.

        With global-average pooling and a linear head, Grad-CAM's channel weights are the
        head's weights (over the map's area), so the map is exactly this decomposition (CAM).
        Maps are measured against the training mean of each feature, so what shows is what
        makes this slice more COVID-like than an average one.
        """
        w, b, centre = self.head
        logit0 = b + float(centre @ w)
        bounds = np.cumsum([0] + [int(ex.feature_dim) for ex in self.extractors])
        maps = []
        for ex, lo in zip(self.extractors, bounds[:-1]):
            image = canvas if ex.input_size == self.canvas_size else resize_rgb(canvas, ex.input_size)
            images = np.stack([image, image[:, ::-1]]) if ex.augment == "flip" else image[None]
            model, parts = _map_model(ex)
            outputs = model(_preprocess(ex, images), training=False)
            for (offset, channels), fmap in zip(parts, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
                cols = slice(lo + offset, lo + offset + channels)
                cams = (np.asarray(fmap, np.float64) - centre[cols]) @ w[cols]  # (views, h, w)
                if len(cams) == 2:  # flip TTA: features are the mean of both views
                    cams = np.stack([cams[0], cams[1][:, ::-1]])
                maps.append(cams.mean(axis=0))
        return maps, logit0

    def _gradcam(self, canvas: np.ndarray) -> np.ndarray:
        maps, _ = self.class_activation_maps(canvas)
        # Each map's mean is its share of the logit; upsampled, they add up on the canvas.
        return np.sum([_resize_map(m, canvas.shape[:2]) for m in maps], axis=0).astype(np.float32)


def _preprocess(ex: FeatureExtractor, images: np.ndarray) -> np.ndarray:
    from feature_extractor.backbones import preprocess_function

    return preprocess_function(ex.spec)(images.astype(np.float32))


def _map_model(ex: FeatureExtractor):
    """The backbone up to the maps its features average, and for each map (offset, channels)
    of its block in the feature vector. Built once per extractor."""
    import keras

    cached = getattr(ex, "_cam_model", None)
    if cached is not None:
        return cached
    model = ex._ensure_model()
    last = model.layers[-1]
    parts = list(last.input) if type(last).__name__ == "Concatenate" else [model.output]
    producers = {id(layer.output): layer for layer in model.layers}
    maps, offsets, offset = [], [], 0
    for part in parts:
        layer = producers.get(id(part))
        channels = int(part.shape[-1])
        if layer is None or type(layer).__name__ != "GlobalAveragePooling2D":
            raise CovidCTError(f"Grad-CAM needs features that average feature maps (--pooling avg or "
                               f"multiscale); this model's {ex.spec.name} features use "
                               f"{ex.pooling}: use --explain-method occlusion")
        maps.append(layer.input)
        offsets.append((offset, channels))
        offset += channels
    cached = (keras.Model(model.input, maps), offsets)
    ex._cam_model = cached
    return cached


def _resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize(
        (size[1], size[0]), Image.BILINEAR), dtype=np.float32)


# -- output ---------------------------------------------------------------------------------
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
    if expl.method == "occlusion":  # soften the patch grid's steps for display (sigma: half a stride)
        from scipy.ndimage import gaussian_filter

        heat = gaussian_filter(heat, sigma=max(1.0, 0.0625 * min(heat.shape)))
    full = np.full((h, w), np.nan, np.float32)
    full[top:bottom, left:right] = _resize_map(np.maximum(heat, 0), (bottom - top, right - left))
    return original, full


def _blend(base: np.ndarray, heat: np.ndarray, vmax: float) -> np.ndarray:
    """Heat over a uint8 slice: colour and opacity grow with the value, zero stays clear."""
    import matplotlib

    norm = np.clip(np.nan_to_num(heat) / vmax, 0, 1)
    colours = matplotlib.colormaps["jet"](norm)[..., :3]
    alpha = 0.6 * norm[..., None]
    return np.round(255 * ((1 - alpha) * base.astype(np.float32) / 255 + alpha * colours)).astype(np.uint8)


def _vmax(heat: np.ndarray, method: str) -> float:
    """Colour scale top; for occlusion at least a 0.02 drop in P(COVID), so noise stays faint."""
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    return max(peak, 0.02 if method == "occlusion" else 1e-12)


def overlay_rgb(expl: Explanation, max_side: int | None = 160) -> np.ndarray:
    """The slice with the heatmap blended in, scaled to ``max_side`` (None: full size)."""
    original, heat = heat_on_slice(expl)
    if max_side:
        scale = max_side / max(original.shape[:2])
        size = (max(1, round(original.shape[0] * scale)), max(1, round(original.shape[1] * scale)))
        original, heat = resize_rgb(original, size), _resize_map(np.nan_to_num(heat), size)
    return _blend(original, heat, _vmax(heat, expl.method))


def render(expl: Explanation, out: str | Path, threshold: float = 0.5) -> Path:
    """A PNG: the slice (with the crop box) beside the slice with the heatmap."""
    import matplotlib

    from .plots import _pyplot, _save

    plt = _pyplot()
    original, heat = heat_on_slice(expl)
    label = "COVID" if expl.p_covid >= threshold else "NonCOVID"
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.8), dpi=110)
    left.imshow(original)
    if expl.prepared.crop is not None:
        top, lft, bottom, rgt = expl.prepared.crop.bbox
        colour = "lime" if expl.prepared.crop.found else "orange"
        left.add_patch(plt.Rectangle((lft - 0.5, top - 0.5), rgt - lft, bottom - top, fill=False,
                                     ec=colour, lw=1.5))
        left.set_title("lung crop (what the model sees)" if expl.prepared.crop.found
                       else f"no lungs found ({expl.prepared.crop.reason}): full image", fontsize=9)
    else:
        left.set_title("input slice", fontsize=9)
    vmax = _vmax(heat, expl.method)
    right.imshow(_blend(original, heat, vmax))
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, vmax), "jet")
    what = ("drop in P(COVID) when hidden" if expl.method == "occlusion"
            else "contribution to the logit vs the average training slice")
    fig.colorbar(scale, ax=right, fraction=0.046, pad=0.04).set_label(what, fontsize=8)
    peak = float(np.nanmax(heat)) if np.isfinite(heat).any() else 0.0
    floor = 0.02 if expl.method == "occlusion" else 0.0
    right.set_title(f"{expl.method}: regions that raised P(COVID)" if peak > floor else
                    f"{expl.method}: no single region raised P(COVID)"
                    + (f" by {floor:g} or more" if floor else ""), fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    name = printable_path(Path(expl.path).name)
    fig.suptitle(f"{name}   P(COVID) = {expl.p_covid:.3f} -> {label} (threshold {threshold:.2f})\n"
                 "Research use only, not for clinical diagnosis", fontsize=10)
    return _save(fig, Path(out))


def explain_records(explainer: ModelExplainer, paths: Sequence[str], out_dir: str | Path,
                    root: str | Path | None = None, threshold: float = 0.5,
                    progress=None) -> dict[str, str]:
    """Write one heatmap PNG per readable image; returns path -> PNG path."""
    from feature_extractor.images import ImageDecodeError

    out_dir = Path(out_dir)
    written: dict[str, str] = {}
    for path in paths:
        try:
            expl = explainer.explain(path)
        except (ImageDecodeError, OSError):
            expl = None  # its prediction row already carries the reason
        if expl is not None:
            written[path] = str(render(expl, out_dir / explanation_filename(path, root), threshold))
        if progress:
            progress(1)
    return written
