"""Turn records into cached feature vectors with a frozen backbone.

Only images whose SHA-256 is not in the cache are decoded and run through the CNN; when all
are cached no model is built (and, with file or imagenet weights, TensorFlow is not imported).
Decoding runs in a thread pool one batch ahead of inference, so the CNN is kept busy.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .backbones import (PRECISIONS, BackboneSpec, check_pooling, check_precision, get_backbone,
                        preprocess_function)
from .cache import CacheRow, FeatureCache, cache_file_name
from .dataset import DICOM_SUFFIXES, Record, with_keys
from .errors import CovidCTError
from .images import DEFAULT_WINDOW, ImageDecodeError, PreparedImage, prepare_image, window_label
from .lung_crop import CROPS, crop_identity
from .provenance import command_line
from .tf_runtime import device_name
from .weights import (IMAGENET, NONE, NONE_WARNING, ResolvedWeights, WeightsChoice,
                      build_with_weights, resolve_weights)

Progress = Callable[[int], None]  # called with the number of images just finished


@dataclass
class ExtractionReport:
    backbone: str
    cache_path: str
    weights: ResolvedWeights
    records: list[Record]          # with keys; unreadable or undecodable ones carry .error
    n_cached: int = 0
    n_new: int = 0
    device: str | None = None      # None when no CNN ran
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    crop_fallbacks: dict[str, str] = field(default_factory=dict)  # path -> why no lungs were found

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def summary(self) -> str:
        text = f"{self.backbone}: {self.n_cached} cached, {self.n_new} new"
        if self.failed:
            text += f", {self.n_failed} failed"
        if self.crop_fallbacks:
            text += f", {len(self.crop_fallbacks)} without lungs found (full image used)"
        text += f" -> {self.cache_path}"
        if self.device:
            text += f" ({self.device}, {self.seconds:.1f} s)"
        return text


AUGMENTS = ("none", "flip")


def cache_identity(spec: BackboneSpec, weights: ResolvedWeights,
                   input_size: tuple[int, int] | None = None, pooling: str = "avg",
                   augment: str = "none", window: tuple[float, float] = DEFAULT_WINDOW,
                   precision: str = "fp32", crop: str = "none") -> dict:
    height, width = input_size or spec.input_size
    return {"backbone": spec.name, "weights_source": weights.source,
            "weights_sha256": weights.sha256, "input_height": height, "input_width": width,
            "preprocessing": spec.preprocessing, "pooling": pooling, "augment": augment,
            "precision": PRECISIONS[precision][0], "crop": crop_identity(crop),
            "window": window_label(window)}


class FeatureExtractor:
    """A frozen backbone with its weights, reading and filling one feature cache.

    Parameters
    ----------
    backbone : registry name (see ``python cli.py backbones``).
    weights : WeightsChoice; default imagenet (keras' download and cache).
    features_dir : folder of the HDF5 caches, default ``features``.
    batch_size : images per forward pass, default 32.
    input_size : (height, width) override of the backbone's size; for fast tests.
    offline : never try to download weights (default: $COVIDCT_OFFLINE).
    pooling : "avg" (default), "avgmax" or "multiscale"; see ``backbones.build_model``.
    augment : "none" (default) or "flip": features averaged over the image and its mirror.
    window : DICOM (level, width) in HU, default (-600, 1500).
    precision : "fp32" (default), "bf16" (CPUs with AVX512-BF16/AMX) or "mixed" (float16, GPUs).
    crop : "none" (default) or "lungs": crop to the lung field, black outside it (lung_crop.py).
    """

    def __init__(self, backbone: str, weights: WeightsChoice | None = None,
                 features_dir: str | Path = "features", batch_size: int = 32,
                 input_size: tuple[int, int] | None = None, offline: bool | None = None,
                 pooling: str = "avg", augment: str = "none",
                 window: tuple[float, float] = DEFAULT_WINDOW, precision: str = "fp32",
                 crop: str = "none"):
        self.spec = get_backbone(backbone)
        self.weights_choice = weights or WeightsChoice(IMAGENET)
        self.features_dir = Path(features_dir)
        self.batch_size = max(1, int(batch_size))
        self.input_size = tuple(input_size) if input_size else self.spec.input_size
        self.offline = offline
        self.pooling = check_pooling(pooling)
        if augment not in AUGMENTS:
            raise CovidCTError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTS)}")
        self.augment = augment
        self.window = tuple(float(v) for v in window)
        self.precision = check_precision(precision)
        if crop not in CROPS:
            raise CovidCTError(f"unknown crop {crop!r}; valid: {', '.join(CROPS)}")
        self.crop = crop
        self._model = None
        self._weights: ResolvedWeights | None = None

    @property
    def weights(self) -> ResolvedWeights:
        """Resolved weights, hashed; builds the model only when the hash needs it."""
        if self._weights is None:
            weights = resolve_weights(self.spec, self.weights_choice, self.offline)
            self._weights = weights
            if weights.sha256 is None:  # imagenet to download, or random init to hash
                self._ensure_model()
        return self._weights

    def _ensure_model(self):
        if self._weights is None:
            self.weights  # resolves (and, for imagenet or none, builds the model)
        if self._model is None:
            self._model, self._weights = build_with_weights(self.spec, self._weights, self.input_size,
                                                            self.pooling, self.precision)
        return self._model

    @property
    def feature_dim(self) -> int:
        """Known from the spec for avg/avgmax; multiscale needs the model's graph."""
        if self.pooling == "avg":
            return self.spec.feature_dim
        if self.pooling == "avgmax":
            return 2 * self.spec.feature_dim
        return int(self._ensure_model().output_shape[-1])

    def open_cache(self) -> FeatureCache:
        identity = cache_identity(self.spec, self.weights, self.input_size, self.pooling, self.augment,
                                  self.window, self.precision, self.crop)
        existing = FeatureCache(self.features_dir / cache_file_name(identity))
        if existing.path.exists():  # no model needed to know its width
            return FeatureCache.open_or_create(self.features_dir, identity, existing.attrs["feature_dim"])
        provenance = {"command": command_line(), "weights_path": self.weights.path}
        if self.weights.source == NONE:
            provenance["warning"] = NONE_WARNING
        return FeatureCache.open_or_create(self.features_dir, identity, self.feature_dim, provenance)

    def extract(self, records: Sequence[Record], progress: Progress | None = None) -> ExtractionReport:
        """Make sure every readable record has features in the cache."""
        start = time.perf_counter()
        records = with_keys(records)
        cache = self.open_cache()
        report = ExtractionReport(self.spec.name, str(cache.path), self.weights, records)
        todo, report.n_cached = _split_cached(records, cache.key_index())
        n_unreadable = sum(1 for r in records if r.error)
        if todo or cache.has_pending():
            with cache.lock():  # one writer per cache; a second extract waits here
                todo, report.n_cached = _split_cached(records, cache.key_index())
                if progress and report.n_cached + n_unreadable:
                    progress(report.n_cached + n_unreadable)
                if todo:
                    report.device = device_name()
                    failed_keys = self._run(list(todo.values()), cache, progress,
                                            report.crop_fallbacks)
                    report.n_new = sum(1 for r in records if not r.error and r.key in todo
                                       and r.key not in failed_keys)
                    report.records = [replace(r, error=failed_keys[r.key])
                                      if not r.error and r.key in failed_keys else r for r in records]
                cache.consolidate()
        elif progress:
            progress(report.n_cached + n_unreadable)
        report.failed = {r.path: r.error for r in report.records if r.error}
        report.seconds = time.perf_counter() - start
        return report

    def prepare(self, path: str | Path) -> PreparedImage:
        """Read and decode one file (and crop it, with crop="lungs"), as extraction does.

        Raises ImageDecodeError or OSError.
        """
        with open(path, "rb") as fh:
            data = fh.read()
        return prepare_image(data, self.window, Path(path).suffix.lower() in DICOM_SUFFIXES, self.crop)

    @property
    def model(self):
        """The frozen keras model, built (and its weights loaded) on first use."""
        return self._ensure_model()

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the float input the backbone's keras preprocessing expects."""
        return preprocess_function(self.spec)(images.astype(np.float32))

    def features_of(self, images: np.ndarray, eager: bool = False) -> np.ndarray:
        """Features of an (N, H, W, 3) uint8 batch at the input size, no cache involved.

        ``eager``: call the model directly (one-off batches) instead of the compiled
        predict_on_batch (worth it when batches repeat: tracing costs 0.3-0.7 s a model).
        """
        model = self.model
        run = (lambda x: model(x, training=False)) if eager else model.predict_on_batch
        x = self.preprocess(images)
        feats = np.asarray(run(x), dtype=np.float32)
        if self.augment == "flip":
            feats = (feats + np.asarray(run(np.ascontiguousarray(x[:, :, ::-1, :])), np.float32)) / 2
        return feats

    def _run(self, todo: list[Record], cache: FeatureCache, progress: Progress | None,
             crop_fallbacks: dict[str, str]) -> dict[str, str]:
        """Extract and append ``todo``; returns key -> reason for images that failed."""
        size = self.input_size
        batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        failed: dict[str, str] = {}

        def load(rec: Record):
            try:
                prepared = self.prepare(rec.path)
            except ImageDecodeError as exc:
                return str(exc)
            except OSError as exc:
                return f"cannot read file: {exc.strerror or exc}"
            if prepared.crop_fallback:
                crop_fallbacks[rec.path] = prepared.crop_fallback
            return prepared.model_input(size)

        workers = max(2, min(8, os.cpu_count() or 2))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: list[Future] = [pool.submit(load, r) for r in batches[0]] if batches else []
            for i, batch in enumerate(batches):
                loaded = [f.result() for f in pending]
                if i + 1 < len(batches):  # decode the next batch while the CNN runs
                    pending = [pool.submit(load, r) for r in batches[i + 1]]
                good = [(r, a) for r, a in zip(batch, loaded) if isinstance(a, np.ndarray)]
                failed.update({r.key: a for r, a in zip(batch, loaded) if isinstance(a, str)})
                if good:
                    feats = self.features_of(np.stack([a for _, a in good]), eager=len(batches) == 1)
                    cache.append([CacheRow(r.key, f, r.path, r.label, r.patient, r.split)
                                  for (r, _), f in zip(good, feats)])
                if progress:
                    progress(len(batch))
        return failed


def _split_cached(records: Sequence[Record], index: dict[str, int]) -> tuple[dict[str, Record], int]:
    """Images still to extract (one per distinct key) and how many records are cached."""
    todo: dict[str, Record] = {}
    n_cached = 0
    for rec in records:
        if rec.error:
            continue
        if rec.key in index:
            n_cached += 1
        else:
            todo.setdefault(rec.key, rec)  # identical bytes are extracted once
    return todo, n_cached
