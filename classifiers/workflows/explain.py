"""Which regions of a slice raised a model's COVID score: occlusion sensitivity and Grad-CAM.

Occlusion works for any classifier, the stacked ensemble included: a patch of the slice is
replaced by a heavily blurred copy of itself (texture and small marks such as arrows or
letters vanish, brightness stays), every backbone of the model re-extracts features for
all patch positions in batches, and the drop in P(COVID) is spread back over the pixels
each patch covered. Grad-CAM needs a linear head (a scaler and a linear model, e.g.
``--clf logreg``): the head's weights are folded into the backbone's graph and the class
activation map is read from every pooled feature map, in one backward pass.

The lesion map (``lesion``, models with a segmentation network) is the explanation a radiologist can
check: each pixel's probability of lesion from the head trained on radiologists' masks, inside
the lungs, with the share of the lung involved. It explains what the slice shows, not how the
COVID classifier weighed it.

Heatmaps live on the model's input canvas (the lung crop with --crop lungs; the full slice for
lesion maps); presentation/heatmaps.py draws them onto the full slice. For a model that reads
lesion summaries (fit --lesion-features), occlusion and Grad-CAM hold the image's own summaries
fixed: they show what the CNN features contribute.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError
from feature_extractor.extract import FeatureExtractor
from feature_extractor.imaging.decode import ImageDecodeError, PreparedImage, resize_map, resize_rgb

from ..records.explanation import METHODS, Explanation
from .model import LoadedModel
from .scoring import label_of



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
    """Explains a loaded model's predictions, one image at a time.

    Parameters
    ----------
    model : the loaded model (any classifier, or the stack, for occlusion); its feature
        extractors (and CNNs) are shared with the predictions of the same command.
    method : "occlusion" (default, any classifier) or "gradcam" (linear heads only).
    patch : occlusion patch side as a fraction of the canvas side (default 1/4: a 7x7 grid
        of positions at half-patch stride, 49 forward passes per backbone and image).
    """

    def __init__(self, model: LoadedModel, method: str = "occlusion", patch: float = 0.25):
        if method not in METHODS:
            raise CovidCTError(f"unknown explanation method {method!r}; valid: {', '.join(METHODS)}")
        self.model = model
        self.estimator = model.bundle.estimator
        self.method = method
        self.patch = float(patch)
        self.extractors: list[FeatureExtractor] = model.extractors
        self.canvas_size = self.extractors[0].input_size
        self.head = linear_head(self.estimator)
        self._site: str | None = None
        self.harmonizer = model.harmonizer  # whose sites it explains as (explain_records: a run's batches too)
        if method == "gradcam" and self.head is None:
            raise CovidCTError(
                f"Grad-CAM needs a linear head (e.g. --clf logreg); this model is "
                f"{model.card.classifier!r}: use --explain-method occlusion")
        if method == "lesion" and model.lesions is None:
            raise CovidCTError(f"--explain-method lesion needs a model with a segmentation network; {model.path} has "
                               "none (fit it with --lesion-data DIR)")
        self._extra = np.zeros(len(model.card.lesion_columns), np.float32)  # the image's lesion summaries
        # Built now, so unsuitable pooling is refused before any prediction runs. Each comes
        # with the (start, stop) columns of its maps' features in the model's feature vector.
        self._cam_models = []
        start = 0
        for ex in self.extractors if method == "gradcam" else []:
            model, widths = _map_model(ex)
            bounds = start + np.cumsum([0] + widths)
            self._cam_models.append((model, list(zip(bounds[:-1], bounds[1:]))))
            start = int(bounds[-1])

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
        blocks.append(np.repeat(self._extra[None], len(canvases), axis=0))
        return self.estimator.predict_proba(np.hstack(blocks))[:, 1]

    def use_site(self, site: str | None) -> None:
        """Explain as the model scores images of ``site`` (its scaler before the classifier)."""
        if site != self._site:
            self.estimator = self.model.estimator_for_site(site, self.harmonizer)
            self.head = linear_head(self.estimator)
            self._site = site

    def explain(self, path: str | Path, prepared: PreparedImage | None = None,
                site: str | None = None) -> Explanation:
        """Raises ImageDecodeError or OSError for an unreadable file. ``site``: see use_site."""
        self.use_site(site)
        if self.method == "lesion":
            return self._lesion(str(path), site)
        if len(self._extra):
            from feature_extractor.imaging.dataset import Record

            summary = self.model.lesions.summaries([Record(str(path))])[str(path)]
            if isinstance(summary, str):
                raise ImageDecodeError(summary)
            self._extra = summary.classifier_features()
        prepared = prepared or self.extractors[0].prepare(path)
        canvas = prepared.model_input(self.canvas_size)
        if self.method == "gradcam":
            maps, _, features = self.class_activation_maps(canvas)
            p = float(self.estimator.predict_proba(np.r_[features, self._extra][None])[0, 1])
            # Each map's mean is its share of the logit; upsampled, they add up on the canvas.
            heat = np.sum([resize_map(m, canvas.shape[:2]) for m in maps], axis=0).astype(np.float32)
        else:
            p, heat = self._occlusion(canvas)
        return Explanation(str(path), p, heat, self.method, prepared)

    def _lesion(self, path: str, site: str | None) -> Explanation:
        from feature_extractor.imaging.dataset import Record

        from ..presentation.lesion_maps import heat, involved
        from .scoring import score_features

        segmentation = self.model.lesions.segment(path)
        feats = self.model.features([Record(path)], site)
        if not feats.readable:
            raise ImageDecodeError(feats.errors.get(path, "cannot be scored"))
        p = score_features(self.model, feats)[0].p_covid
        original = np.repeat(np.clip(np.round(segmentation.grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return Explanation(path, p, heat(segmentation), "lesion", PreparedImage(original), involved(segmentation))

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
    def class_activation_maps(self, canvas: np.ndarray) -> tuple[list[np.ndarray], float, np.ndarray]:
        """Per pooled feature map, each pixel's contribution to the logit; the logit of the
        average training slice (the head's centre), so that logit = centre + sum of map means;
        and the feature vector (each map's spatial mean is its block of features, as the model
        pools it). One forward pass per backbone.

        With global-average pooling and a linear head, Grad-CAM's channel weights are the
        head's weights (over the map's area), so the map is exactly this decomposition (CAM).
        Maps are measured against the training mean of each feature, so what shows is what
        makes this slice more COVID-like than an average one.
        """
        w, b, centre = self.head
        maps, features = [], []
        for ex, (model, parts) in zip(self.extractors, self._cam_models):
            image = canvas if ex.input_size == self.canvas_size else resize_rgb(canvas, ex.input_size)
            images = np.stack([image, image[:, ::-1]]) if ex.spec.tta == "flip" else image[None]
            outputs = model(ex.preprocess(images), training=False)
            for (start, stop), fmap in zip(parts, outputs if isinstance(outputs, (list, tuple)) else [outputs]):
                fmap = np.asarray(fmap, np.float64)  # (views, h, w, channels)
                cams = (fmap - centre[start:stop]) @ w[start:stop]  # (views, h, w)
                if len(cams) == 2:  # flip TTA: features are the mean of both views
                    cams = np.stack([cams[0], cams[1][:, ::-1]])
                maps.append(cams.mean(axis=0))
                features.append(fmap.mean(axis=(1, 2)).mean(axis=0))
        return maps, b + float(centre @ w), np.concatenate(features).astype(np.float32)


def _map_model(ex: FeatureExtractor):
    """The backbone up to the maps its features average, and each map's channel count (its
    block of the backbone's features, in order)."""
    from feature_extractor.runtimes.keras_backend import keras_module

    keras = keras_module()
    model = ex.model
    last = model.layers[-1]
    parts = list(last.input) if type(last).__name__ == "Concatenate" else [model.output]
    producers = {id(layer.output): layer for layer in model.layers}
    maps = []
    for part in parts:
        layer = producers.get(id(part))
        if layer is None or type(layer).__name__ != "GlobalAveragePooling2D":
            raise CovidCTError(f"Grad-CAM needs features that average feature maps (--pooling avg or "
                               f"multiscale); this model's {ex.spec.backbone} features use "
                               f"{ex.spec.pooling}: use --explain-method occlusion")
        maps.append(layer.input)
    return keras.Model(model.inputs[0], maps), [int(p.shape[-1]) for p in parts]


def explain_records(explainer: ModelExplainer, paths: Sequence[str], out_dir: str | Path,
                    root: str | Path | None = None, sites: dict[str, str | None] | None = None,
                    harmonizer=None) -> dict[str, str]:
    """Write one heatmap PNG per readable image; returns path -> PNG path. ``sites``: each
    image's site, for a harmonized model (PredictionRow.site), and ``harmonizer`` the one that scored
    them (ModelFeatures.harmonizer)."""
    from ..presentation.heatmaps import explanation_filename, render

    out_dir = Path(out_dir)
    if harmonizer is not None:
        explainer.harmonizer, explainer._site = harmonizer, None
    written: dict[str, str] = {}
    threshold = explainer.model.threshold
    with explainer.model.context.progress("explain       ", len(paths)) as progress:
        for path in paths:
            try:
                expl = explainer.explain(path, site=(sites or {}).get(path))
            except (ImageDecodeError, OSError):
                expl = None  # its prediction row already carries the reason
            if expl is not None:
                written[path] = str(render(expl, out_dir / explanation_filename(path, root),
                                            label_of(expl.p_covid, threshold), threshold))
            progress(1)
    return written
