"""The feature cache: one HDF5 file per setting that changes the numbers.

A file's identity is everything that changes a feature vector: backbone, weights SHA-256,
input size, preprocessing, pooling, test-time augmentation, precision and crop. Its name carries a short hash of
that identity; its attributes carry the identity in full plus provenance (library versions,
when, by which command). Rows are keyed by the SHA-256 of the image bytes, so a renamed or
moved file is found again and a changed one is extracted anew.

Datasets: ``features`` (N, D) float32, ``key`` (N,) SHA-256 hex, ``path``, ``label`` (int8,
-1 unknown), ``patient``, ``split`` (strings, "" unknown).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from .errors import FeatureCacheError
from .provenance import FORMAT_VERSION, library_versions, utc_now

IDENTITY_FIELDS = ("backbone", "weights_source", "weights_sha256", "input_height",
                   "input_width", "preprocessing", "pooling", "augment", "precision", "crop")
_STR = h5py.string_dtype("utf-8")


def identity_hash(identity: dict) -> str:
    canonical = json.dumps({k: identity[k] for k in IDENTITY_FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_file_name(identity: dict) -> str:
    return f"{identity['backbone']}-{identity['weights_source']}-{identity_hash(identity)[:12]}.h5"


def printable_path(path: str) -> str:
    """A path as valid UTF-8 text, even when the file name's bytes are not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class CacheRow:
    key: str
    features: np.ndarray
    path: str
    label: int | None = None
    patient: str | None = None
    split: str | None = None


class FeatureCache:
    """One cache file. Opened per operation, so no handle outlives a call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open_or_create(cls, features_dir: str | Path, identity: dict, feature_dim: int,
                       provenance: dict | None = None) -> "FeatureCache":
        features_dir = Path(features_dir)
        features_dir.mkdir(parents=True, exist_ok=True)
        cache = cls(features_dir / cache_file_name(identity))
        if cache.path.exists():
            stored = cache.identity
            if any(str(stored.get(k)) != str(identity[k]) for k in IDENTITY_FIELDS):
                raise FeatureCacheError(f"{cache.path} holds features of another setting "
                                        f"({stored}); move it away or use another --features-dir")
            return cache
        with h5py.File(cache.path, "w") as fh:
            for key in IDENTITY_FIELDS:
                fh.attrs[key] = identity[key]
            fh.attrs["feature_dim"] = feature_dim
            fh.attrs["format_version"] = FORMAT_VERSION
            fh.attrs["created"] = utc_now()
            versions = library_versions()
            for package in ("tensorflow", "keras"):
                fh.attrs[f"{package}_version"] = versions.get(package, "unknown")
            fh.attrs["provenance"] = json.dumps({"versions": versions, **(provenance or {})})
            fh.create_dataset("features", shape=(0, feature_dim), maxshape=(None, feature_dim),
                              dtype="float32", chunks=(min(256, max(1, 65536 // feature_dim)), feature_dim))
            fh.create_dataset("key", shape=(0,), maxshape=(None,), dtype="S64", chunks=(1024,))
            fh.create_dataset("label", shape=(0,), maxshape=(None,), dtype="int8", chunks=(1024,))
            for name in ("path", "patient", "split"):
                fh.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        return cache

    def _open(self, mode: str = "r") -> h5py.File:
        try:
            return h5py.File(self.path, mode)
        except OSError as exc:
            raise FeatureCacheError(f"cannot open feature cache {self.path}: {exc}") from None

    @property
    def attrs(self) -> dict:
        with self._open() as fh:
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}

    @property
    def identity(self) -> dict:
        attrs = self.attrs
        return {k: attrs.get(k) for k in IDENTITY_FIELDS}

    def __len__(self) -> int:
        with self._open() as fh:
            return int(fh["key"].shape[0])

    def key_index(self) -> dict[str, int]:
        with self._open() as fh:
            return {k.decode(): i for i, k in enumerate(fh["key"][:])}

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """Features for ``keys`` in that order; a missing key raises FeatureCacheError."""
        index = self.key_index()
        missing = [k for k in keys if k not in index]
        if missing:
            raise FeatureCacheError(f"{len(missing)} of {len(keys)} images have no features in "
                                    f"{self.path}; run extract first")
        rows = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
        with self._open() as fh:
            data = fh["features"]
            if len(rows) == 0:
                return np.zeros((0, data.shape[1]), dtype=np.float32)
            order = np.argsort(rows)
            # h5py wants increasing, unique indices: read the unique rows, then expand.
            unique, inverse = np.unique(rows[order], return_inverse=True)
            block = data[unique]
            out = np.empty((len(rows), data.shape[1]), dtype=np.float32)
            out[order] = block[inverse]
            return out

    def append(self, rows: Sequence[CacheRow]) -> None:
        rows = [r for r in rows]
        if not rows:
            return
        with self._open("a") as fh:
            n = fh["key"].shape[0]
            m = n + len(rows)
            for name in ("features", "key", "label", "path", "patient", "split"):
                fh[name].resize(m, axis=0)
            fh["features"][n:m] = np.stack([r.features for r in rows]).astype(np.float32)
            fh["key"][n:m] = np.array([r.key.encode() for r in rows], dtype="S64")
            fh["label"][n:m] = np.array([-1 if r.label is None else r.label for r in rows], dtype=np.int8)
            fh["path"][n:m] = [printable_path(r.path) for r in rows]
            fh["patient"][n:m] = [r.patient or "" for r in rows]
            fh["split"][n:m] = [r.split or "" for r in rows]
            fh.attrs["updated"] = utc_now()


def list_caches(features_dir: str | Path, backbone: str | None = None) -> list[FeatureCache]:
    """Cache files under ``features_dir``, optionally of one backbone, newest first."""
    folder = Path(features_dir)
    if not folder.is_dir():
        return []
    caches = []
    for path in sorted(folder.glob("*.h5"), key=lambda p: p.stat().st_mtime, reverse=True):
        cache = FeatureCache(path)
        try:
            name = cache.attrs.get("backbone")
        except FeatureCacheError:
            continue
        if backbone is None or name == backbone:
            caches.append(cache)
    return caches
