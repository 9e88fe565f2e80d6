"""Which cached features fit trains on: the caches that cover the training images and match
the selection, read by key and put side by side (no CNN runs here)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from covidct_core.errors import AmbiguousCacheError, FeatureCacheError
from feature_extractor.backbones import get_backbone
from feature_extractor.cache.feature_cache import FeatureCache, list_caches
from feature_extractor.feature_spec import SETTING, SETTINGS, FeatureSpec
from feature_extractor.imaging.dataset import Record
from feature_extractor.weights import NONE, WeightsChoice, parse_weights_options, resolve_weights


@dataclass(frozen=True)
class BackboneFeatures:
    """One backbone's cache and what is in it."""

    cache: FeatureCache

    @property
    def spec(self) -> FeatureSpec:
        return self.cache.spec

    def manifest_entry(self) -> dict:
        """The model manifest's record of these features."""
        return {**self.spec.to_record(), "feature_dim": self.cache.feature_dim,
                "cache_file": self.cache.path.name}


@dataclass(frozen=True)
class FeatureSelection:
    """Which cached features to train on.

    ``backbones``: these, in this order (empty: every backbone whose cache covers the
    training images). ``weights``: the weights of some backbones, when caches of several
    exist. ``settings``: FeatureSpec settings the caches must have (absent: any).
    """

    backbones: tuple[str, ...] = ()
    weights: Mapping[str, WeightsChoice] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(cls, backbones: Sequence[str] = (), weights_options: Sequence[str] = (),
                     **settings: str | None) -> "FeatureSelection":
        """From fit's options: ``--backbone``, ``--weights NAME=...`` and the SETTINGS filters."""
        names = tuple(dict.fromkeys(get_backbone(b).name for b in backbones))
        weights = parse_weights_options(weights_options, names, default=None) if weights_options else {}
        return cls(names, weights, {k: SETTING[k].value(v) for k, v in settings.items() if v is not None})

    def wanted(self, backbone: str) -> dict[str, Any]:
        """What a cache of ``backbone`` must match (FeatureSpec.matches)."""
        wanted = dict(self.settings)
        choice = self.weights.get(backbone)
        if choice is not None:
            wanted["weights_source"] = choice.source
            if choice.source != NONE:
                wanted["weights_sha256"] = resolve_weights(backbone, choice, offline=True).sha256
        return wanted


def select_cache(features_dir: str | Path, backbone: str, keys: Sequence[str],
                 **wanted: Any) -> BackboneFeatures:
    """The one cache of ``backbone`` that covers all ``keys`` and matches ``wanted``."""
    candidates = [c for c in list_caches(features_dir, backbone) if c.spec.matches(**wanted)]
    want = set(keys)
    covering, best_partial = [], 0
    for cache in candidates:
        n_have = len(cache.present(list(want)))
        best_partial = max(best_partial, n_have)
        if n_have == len(want):
            covering.append(cache)
    if not covering:
        settings = ", ".join(f"{k} {_text(k, v)}" for k, v in wanted.items() if v is not None)
        raise FeatureCacheError(
            f"no cached {backbone} features{f' ({settings})' if settings else ''} for all "
            f"{len(want)} images in {features_dir}/ (best cache has {best_partial}); run: "
            f"python cli.py extract --backbone {backbone} --data <the same data>")
    if len(covering) > 1:
        listing = "; ".join(f"{c.path.name}: {c.spec.summary()}" for c in covering)
        options = ", ".join(["--weights"] + [f"--{s.name}" for s in SETTINGS])
        raise AmbiguousCacheError(f"several {backbone} caches cover these images: {listing}. "
                                  f"Choose with {options}.")
    return BackboneFeatures(covering[0])


def _text(name: str, value: Any) -> str:
    return SETTING[name].text(value) if name in SETTING else str(value)[:12]


def resolve_sources(records: Sequence[Record], selection: FeatureSelection,
                    features_dir: str | Path) -> list[BackboneFeatures]:
    """The cache to use for each backbone of the selection (see FeatureSelection)."""
    keys = [r.key for r in records]

    def select(name: str) -> BackboneFeatures:
        return select_cache(features_dir, name, keys, **selection.wanted(name))

    if selection.backbones:
        return [select(name) for name in selection.backbones]
    sources = []
    for name in available_backbones(features_dir):
        try:  # the backbones whose caches cover the training images
            covering = select_cache(features_dir, name, keys, **selection.settings)
        except AmbiguousCacheError:
            if name in selection.weights:  # --weights may single one out
                covering = None
            else:
                raise
        except FeatureCacheError:
            continue
        sources.append(select(name) if name in selection.weights else covering)
    if not sources:
        raise FeatureCacheError(f"no cached features in {features_dir}/ cover the training "
                                "images; run: python cli.py extract --backbone NAME")
    return sources


def available_backbones(features_dir: str | Path) -> list[str]:
    return sorted({c.spec.backbone for c in list_caches(features_dir)})


def feature_matrix(records: Sequence[Record], caches: Sequence[FeatureCache]) -> np.ndarray:
    """Features of ``records`` (with keys), one cache's columns after another."""
    keys = [r.key for r in records]
    if any(k is None for k in keys):
        raise FeatureCacheError("records need their SHA-256 keys before features can be read")
    return np.hstack([c.read(keys) for c in caches]) if caches else np.zeros((len(keys), 0))
