"""Cached features of a list of records, found by key and put side by side (no CNN runs here)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.cache import FeatureCache, list_caches
from feature_extractor.dataset import Record
from feature_extractor.errors import FeatureCacheError


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
                "precision": attrs["precision"], "crop": attrs["crop"],
                "weights_path": json.loads(attrs.get("provenance", "{}")).get("weights_path"),
                "cache_file": self.cache.path.name}


def select_cache(features_dir: str | Path, backbone: str, keys: Sequence[str],
                 weights_source: str | None = None,
                 weights_sha256: str | None = None) -> BackboneFeatures:
    """The one cache of ``backbone`` that covers all ``keys`` (optionally with given weights)."""
    candidates = list_caches(features_dir, backbone)
    if weights_source:
        candidates = [c for c in candidates if c.attrs.get("weights_source") == weights_source]
    if weights_sha256:
        candidates = [c for c in candidates if c.attrs.get("weights_sha256") == weights_sha256]
    wanted = set(keys)
    covering, best_partial = [], 0
    for cache in candidates:
        n_have = len(wanted & cache.key_index().keys())
        best_partial = max(best_partial, n_have)
        if n_have == len(wanted):
            covering.append(cache)
    if not covering:
        raise FeatureCacheError(
            f"no cached {backbone} features for all {len(wanted)} images in {features_dir}/ "
            f"(best cache has {best_partial}); run: python cli.py extract --backbone {backbone} "
            "--data <the same data>")
    sources = {(c.attrs["weights_source"], c.attrs["weights_sha256"]) for c in covering}
    if len(sources) > 1:
        listing = "; ".join(f"{c.path.name} ({c.attrs['weights_source']})" for c in covering)
        raise FeatureCacheError(f"several {backbone} caches with different weights cover these "
                                f"images: {listing}. Choose one with --weights {backbone}=...")
    return BackboneFeatures(backbone, covering[0])


def available_backbones(features_dir: str | Path) -> list[str]:
    return sorted({c.attrs["backbone"] for c in list_caches(features_dir)})


def feature_matrix(records: Sequence[Record], sources: Sequence[BackboneFeatures]) -> np.ndarray:
    """Features of ``records`` (with keys), backbones concatenated in the given order."""
    keys = [r.key for r in records]
    if any(k is None for k in keys):
        raise FeatureCacheError("records need their SHA-256 keys before features can be read")
    return np.hstack([s.cache.read(keys) for s in sources]) if sources else np.zeros((len(keys), 0))
