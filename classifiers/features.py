"""Cached features of a list of records, found by key and put side by side (no CNN runs here)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.cache import FeatureCache, list_caches
from feature_extractor.dataset import Record
from feature_extractor.errors import AmbiguousCacheError, FeatureCacheError


@dataclass(frozen=True)
class BackboneFeatures:
    """Which cache holds one backbone's features, and what made them."""

    backbone: str
    cache: FeatureCache

    def describe(self) -> dict:
        attrs = self.cache.attrs
        return {"name": self.backbone, "weights_source": attrs["weights_source"],
                "weights_sha256": attrs["weights_sha256"], "feature_dim": int(attrs["feature_dim"]),
                "input_size": [int(attrs["input_height"]), int(attrs["input_width"])],
                "preprocessing": attrs["preprocessing"], "pooling": attrs["pooling"],
                "augment": attrs.get("augment", "none"), "window": attrs.get("window"),
                "precision": attrs["precision"], "crop": attrs["crop"],
                "weights_path": json.loads(attrs.get("provenance", "{}")).get("weights_path"),
                "cache_file": self.cache.path.name}


def select_cache(features_dir: str | Path, backbone: str, keys: Sequence[str],
                 **wanted: str | None) -> BackboneFeatures:
    """The one cache of ``backbone`` that covers all ``keys``.

    ``wanted``: identity fields the cache must have (weights_source, weights_sha256,
    pooling, augment, ...); None means any.
    """
    candidates = []
    for cache in list_caches(features_dir, backbone):
        attrs = cache.attrs  # one read per file: each access opens the HDF5 file
        if all(v is None or str(attrs.get(k)) == str(v) for k, v in wanted.items()):
            candidates.append((cache, attrs))
    want = set(keys)
    covering, best_partial = [], 0
    for cache, attrs in candidates:
        n_have = len(want & cache.key_index().keys())
        best_partial = max(best_partial, n_have)
        if n_have == len(want):
            covering.append((cache, attrs))
    if not covering:
        settings = ", ".join(f"{k}={v}" for k, v in wanted.items() if v is not None)
        raise FeatureCacheError(
            f"no cached {backbone} features{f' ({settings})' if settings else ''} for all "
            f"{len(want)} images in {features_dir}/ (best cache has {best_partial}); run: "
            f"python cli.py extract --backbone {backbone} --data <the same data>")
    if len(covering) > 1:
        listing = "; ".join(f"{c.path.name} (weights {a['weights_source']}, pooling {a['pooling']}, "
                            f"tta {a.get('augment')}, precision {a.get('precision')}, crop {a.get('crop')})"
                            for c, a in covering)
        raise AmbiguousCacheError(f"several {backbone} caches cover these images: {listing}. "
                                "Choose with --weights, --pooling, --tta, --precision or --crop.")
    return BackboneFeatures(backbone, covering[0][0])


def available_backbones(features_dir: str | Path) -> list[str]:
    return sorted({c.attrs["backbone"] for c in list_caches(features_dir)})


def feature_matrix(records: Sequence[Record], sources: Sequence[BackboneFeatures]) -> np.ndarray:
    """Features of ``records`` (with keys), backbones concatenated in the given order."""
    keys = [r.key for r in records]
    if any(k is None for k in keys):
        raise FeatureCacheError("records need their SHA-256 keys before features can be read")
    return np.hstack([s.cache.read(keys) for s in sources]) if sources else np.zeros((len(keys), 0))
