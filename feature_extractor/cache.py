"""The feature cache: one HDF5 file per setting that changes the numbers.

A file's identity is everything that changes a feature vector: backbone, weights SHA-256,
input size, preprocessing, pooling, test-time augmentation, precision, crop and DICOM
window. Its name carries a short hash of that identity; its attributes carry the identity in
full plus provenance (library versions, when, by which command). Rows are keyed by the
SHA-256 of the image bytes, so a renamed or moved file is found again and a changed one is
extracted anew.

Crash safety: the HDF5 file is never modified in place. New rows land in pending batch files
beside it (``<name>.h5.pending/``), each written to a temporary name and renamed, so a batch
is there whole or not at all. Readers see the file plus the pending batches. ``consolidate``
merges pending batches into a new file that atomically replaces the old one. A process
killed at any moment (kill -9) leaves a readable cache that holds every finished batch.
Writers take an exclusive lock (``<name>.h5.lock``), so concurrent extracts wait their turn.

Datasets: ``features`` (N, D) float32, ``key`` (N,) SHA-256 hex, ``path``, ``label`` (int8,
-1 unknown), ``patient``, ``split`` (strings, "" unknown).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

from .errors import FeatureCacheError
from .provenance import FORMAT_VERSION, library_versions, utc_now

log = logging.getLogger(__name__)

IDENTITY_FIELDS = ("backbone", "weights_source", "weights_sha256", "input_height",
                   "input_width", "preprocessing", "pooling", "augment", "precision", "crop",
                   "window")
_STR = h5py.string_dtype("utf-8")
_COLUMNS = ("features", "key", "label", "path", "patient", "split")


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


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rows_to_columns(rows: Sequence[CacheRow]) -> dict[str, np.ndarray]:
    return {"features": np.stack([r.features for r in rows]).astype(np.float32),
            "key": np.array([r.key.encode() for r in rows], dtype="S64"),
            "label": np.array([-1 if r.label is None else r.label for r in rows], dtype=np.int8),
            "path": np.array([printable_path(r.path) for r in rows], dtype=str),
            "patient": np.array([r.patient or "" for r in rows], dtype=str),
            "split": np.array([r.split or "" for r in rows], dtype=str)}


class FeatureCache:
    """One cache file with its pending batches. Opened per operation; no handle outlives a call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pending_dir = self.path.with_name(self.path.name + ".pending")
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # -- creation and locking -------------------------------------------------------------
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
        attrs = {**{k: identity[k] for k in IDENTITY_FIELDS}, "feature_dim": feature_dim,
                 "format_version": FORMAT_VERSION, "created": utc_now()}
        versions = library_versions()
        for package in ("tensorflow", "keras"):
            attrs[f"{package}_version"] = versions.get(package, "unknown")
        attrs["provenance"] = json.dumps({"versions": versions, **(provenance or {})})
        with cache.lock():
            if not cache.path.exists():  # another process may have made it meanwhile
                empty = {"features": np.zeros((0, feature_dim), np.float32)}
                cache._write_atomically(attrs, empty)
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
            return {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}

    @property
    def identity(self) -> dict:
        attrs = self.attrs
        return {k: attrs.get(k) for k in IDENTITY_FIELDS}

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
    def append(self, rows: Sequence[CacheRow]) -> None:
        """Add rows as one pending batch, atomically (the batch is whole or absent)."""
        rows = list(rows)
        if not rows:
            return
        self.pending_dir.mkdir(exist_ok=True)
        # Names sort in append order, so consolidation keeps rows in the order they came.
        final = self.pending_dir / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, **_rows_to_columns(rows))
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
        seen = {k for k in columns["key"]}
        n_before = len(seen)
        for batch in batches:
            keep = np.array([k not in seen for k in batch["key"]], dtype=bool)
            seen.update(batch["key"][keep])
            for name in _COLUMNS:
                values = batch[name][keep]
                if name in ("path", "patient", "split"):
                    values = values.astype(object)
                columns[name] = np.concatenate([columns[name], values])
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
            fh.create_dataset("key", data=columns.get("key", np.zeros(0, "S64")), maxshape=(None,),
                              chunks=(1024,))
            fh.create_dataset("label", data=columns.get("label", np.zeros(0, np.int8)),
                              maxshape=(None,), chunks=(1024,))
            for name in ("path", "patient", "split"):
                values = [str(v) if not isinstance(v, bytes) else v.decode()
                          for v in columns.get(name, [])]
                fh.create_dataset(name, data=np.array(values, dtype=object), dtype=_STR,
                                  maxshape=(None,), chunks=(1024,))
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
    """Cache files under ``features_dir``, optionally of one backbone, newest first."""
    folder = Path(features_dir)
    if not folder.is_dir():
        return []
    caches = []
    for path in sorted(folder.glob("*.h5"), key=lambda p: p.stat().st_mtime, reverse=True):
        cache = FeatureCache(path)
        try:
            attrs = cache.attrs
        except FeatureCacheError:
            continue
        if any(field not in attrs for field in IDENTITY_FIELDS):
            log.info("ignoring %s: written by an older version (its identity lacks %s)", path.name,
                     [f for f in IDENTITY_FIELDS if f not in attrs])
            continue
        if backbone is None or attrs.get("backbone") == backbone:
            caches.append(cache)
    return caches
