"""The feature cache: one HDF5 file per FeatureSpec, rows keyed by the SHA-256 of the image bytes.

A file's identity is its FeatureSpec (feature_spec.py): everything that changes a feature
vector. Its name carries a short hash of that identity; its attributes carry the identity in
full plus provenance (library versions, when, by which command). Rows are keyed by the
SHA-256 of the image bytes, so a renamed or moved file is found again and a changed one is
extracted anew. Caches of format 1 (named by an older spelling of the identity) are found by
their attributes and keep working.

Crash safety: the HDF5 file is never modified in place. New rows land in pending batch files
beside it (``<name>.h5.pending/``), each written to a temporary name and renamed, so a batch
is there whole or not at all. Readers see the file plus the pending batches. ``consolidate``
merges pending batches into a new file that atomically replaces the old one. A process
killed at any moment (kill -9) leaves a readable cache that holds every finished batch.
Writers take an exclusive lock (``<name>.h5.lock``), so concurrent extracts wait their turn.

Datasets: ``features`` (N, D) float32 and ``key`` (N,) SHA-256 hex. Nothing about the image
(path, label, patient) is stored: the dataset knows it, and a cache may be shared.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
import uuid
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from .errors import FeatureCacheError, SettingsError
from .feature_spec import FORMAT_VERSION, FeatureSpec
from .provenance import library_versions, utc_now

log = logging.getLogger(__name__)

_COLUMNS = ("features", "key")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FeatureCache:
    """One cache file with its pending batches. Opened per operation; no handle outlives a call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pending_dir = self.path.with_name(self.path.name + ".pending")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # -- creation and locking -------------------------------------------------------------
    @classmethod
    def create(cls, features_dir: str | Path, spec: FeatureSpec, feature_dim: int,
               provenance: dict | None = None) -> "FeatureCache":
        """A new, empty cache for ``spec`` (resolved weights); see also :func:`find_cache`."""
        features_dir = Path(features_dir)
        features_dir.mkdir(parents=True, exist_ok=True)
        cache = cls(features_dir / spec.cache_file_name())
        attrs = {**spec.to_record(), "feature_dim": feature_dim, "format_version": FORMAT_VERSION,
                 "created": utc_now()}
        versions = library_versions()
        for package in ("tensorflow", "keras"):
            attrs[f"{package}_version"] = versions.get(package, "unknown")
        attrs["provenance"] = json.dumps({"versions": versions, **(provenance or {})})
        with cache.lock():
            if not cache.path.exists():  # another process may have made it meanwhile
                cache._write_atomically(attrs, {"features": np.zeros((0, feature_dim), np.float32),
                                                "key": np.zeros(0, "S64")})
        return cache

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive writer lock; a second writer waits (and says so in the log)."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("another process is writing %s; waiting for it to finish", self.path.name)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- reading --------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise FeatureCacheError(f"cannot read feature cache {self.path} ({exc}); delete it "
                                    "to extract again") from None

    @property
    def attrs(self) -> dict:
        with self._open() as fh:
            return {k: (v.item() if hasattr(v, "item") and v.ndim == 0 else v) for k, v in fh.attrs.items()}

    @cached_property
    def spec(self) -> FeatureSpec:
        """What the features are; raises SettingsError for a cache of an unreadable format."""
        attrs = self.attrs
        return FeatureSpec.from_record(attrs, int(attrs.get("format_version", 1)))

    @property
    def feature_dim(self) -> int:
        return int(self.attrs["feature_dim"])

    def has_pending(self) -> bool:
        return bool(self._pending_files())

    def _pending_files(self) -> list[Path]:
        if not self.pending_dir.is_dir():
            return []
        return sorted(p for p in self.pending_dir.iterdir() if p.suffix == ".npz")

    @staticmethod
    def _load_batch(path: Path) -> dict[str, np.ndarray] | None:
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in _COLUMNS}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as exc:  # not ours, or damaged by hand
            log.warning("ignoring unreadable pending batch %s: %s", path, exc)
            return None

    def _snapshot(self, use):
        """Call ``use(open_file, pending_batches, keys)`` on one consistent view.

        If another process consolidates while we list pending batches, one vanishes: start
        over, and the replaced file then holds its rows.
        """
        for _ in range(10):
            try:
                with self._open() as fh:
                    batches = [b for b in map(self._load_batch, self._pending_files()) if b is not None]
                    keys = [k.decode() for k in fh["key"][:]]
                    for batch in batches:
                        keys += [k.decode() for k in batch["key"]]
                    return use(fh, batches, keys)
            except FileNotFoundError:
                continue
        raise FeatureCacheError(f"{self.path} kept changing while being read; try again")

    def __len__(self) -> int:
        return len(self.key_index())

    def key_index(self) -> dict[str, int]:
        """key -> row, over the file and its pending batches (first occurrence wins)."""
        return self._snapshot(lambda fh, batches, keys: _first_index(keys))

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """Features for ``keys`` in that order; a missing key raises FeatureCacheError."""
        return self._snapshot(lambda fh, batches, all_keys: _gather(fh, batches, all_keys, keys, self.path))

    # -- writing --------------------------------------------------------------------------
    def append(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Add rows as one pending batch, atomically (the batch is whole or absent)."""
        if not len(keys):
            return
        self.pending_dir.mkdir(exist_ok=True)
        # Names sort in append order, so consolidation keeps rows in the order they came.
        final = self.pending_dir / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, features=np.asarray(features, np.float32),
                     key=np.array([k.encode() for k in keys], dtype="S64"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)

    def consolidate(self) -> int:
        """Merge pending batches into the HDF5 file (atomic replace); returns rows added.

        Call with the lock held.
        """
        pending = self._pending_files()
        if not pending:
            return 0
        batches = [b for b in map(self._load_batch, pending) if b is not None]
        with self._open() as fh:
            attrs = dict(fh.attrs)
            columns = {name: fh[name][:] for name in _COLUMNS}
        seen = set(columns["key"])
        n_before = len(seen)
        for batch in batches:
            keep = np.array([k not in seen for k in batch["key"]], dtype=bool)
            seen.update(batch["key"][keep])
            for name in _COLUMNS:
                columns[name] = np.concatenate([columns[name], batch[name][keep]])
        attrs["updated"] = utc_now()
        self._write_atomically(attrs, columns)
        for path in pending:
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: another writer's batch arrived
            self.pending_dir.rmdir()
        return len(seen) - n_before

    def _write_atomically(self, attrs: dict, columns: dict[str, np.ndarray]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        dim = columns["features"].shape[1]
        with h5py.File(tmp, "w") as fh:
            for k, v in attrs.items():
                fh.attrs[k] = v
            fh.create_dataset("features", data=columns["features"], maxshape=(None, dim),
                              chunks=(min(256, max(1, 65536 // dim)), dim))
            fh.create_dataset("key", data=columns["key"].astype("S64"), maxshape=(None,), chunks=(1024,))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)


def _first_index(keys: list[str]) -> dict[str, int]:
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        index.setdefault(key, i)
    return index


def _gather(fh: h5py.File, batches: list[dict], all_keys: list[str], keys: Sequence[str],
            path: Path) -> np.ndarray:
    index = _first_index(all_keys)
    missing = [k for k in keys if k not in index]
    if missing:
        raise FeatureCacheError(f"{len(missing)} of {len(keys)} images have no features in "
                                f"{path}; run extract first")
    rows = np.fromiter((index[k] for k in keys), dtype=np.int64, count=len(keys))
    n_main, dim = fh["features"].shape
    out = np.empty((len(rows), dim), dtype=np.float32)
    in_main = rows < n_main
    if in_main.any():
        # h5py wants increasing, unique indices: read the unique rows, then expand.
        unique, inverse = np.unique(rows[in_main], return_inverse=True)
        out[in_main] = fh["features"][unique][inverse]
    if not in_main.all():
        pending = np.concatenate([b["features"] for b in batches])
        out[~in_main] = pending[rows[~in_main] - n_main]
    return out


def list_caches(features_dir: str | Path, backbone: str | None = None) -> list[FeatureCache]:
    """Readable caches under ``features_dir``, optionally of one backbone, newest first."""
    folder = Path(features_dir)
    if not folder.is_dir():
        return []
    caches = []
    for path in sorted(folder.glob("*.h5"), key=lambda p: p.stat().st_mtime, reverse=True):
        cache = FeatureCache(path)
        try:
            spec = cache.spec
        except FeatureCacheError:
            continue
        except SettingsError as exc:
            log.info("ignoring %s: %s", path.name, exc)
            continue
        if backbone is None or spec.backbone == backbone:
            caches.append(cache)
    return caches


def find_cache(features_dir: str | Path, spec: FeatureSpec) -> FeatureCache | None:
    """The cache of ``spec`` (resolved weights): by its file name, else (a cache written by an
    older version, under another name) by the identity in its attributes."""
    path = Path(features_dir) / spec.cache_file_name()
    identity = spec.identity()
    if path.exists():
        cache = FeatureCache(path)
        if cache.spec.identity() != identity:
            raise FeatureCacheError(f"{path} holds features of another setting ({cache.spec.summary()}); "
                                    "move it away or use another --features-dir")
        return cache
    return next((c for c in list_caches(features_dir, spec.backbone) if c.spec.identity() == identity), None)
