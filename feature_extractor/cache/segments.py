"""Segment files of a feature cache: immutable batches of rows, each written whole or not at all.

A segment holds two columns, ``features`` (N, D) float32 and ``key`` (N,) SHA-256 hex. Three
kinds are read alike, in this order (the first row of a key wins):

- ``@head``: the cache's own HDF5 file. It carries the identity and provenance attributes;
  caches written before segments (formats 1-2) also keep their rows in it. Never rewritten.
- ``pending/<name>.npz``: batches of the pre-segment writer, left by a run that was killed
  before it merged them. Compaction moves their rows into HDF5 segments.
- ``segments/<name>.h5``: what appends and compaction write now. Names sort in write order.

Writing: a temporary file in the same folder, fsync, rename, fsync of the folder. A process
killed at any moment leaves either the whole segment or a ``.tmp`` file nobody reads.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import h5py
import numpy as np

log = logging.getLogger(__name__)

HEAD = "@head"
# Read whole segments rather than scattered rows once this share of them is wanted.
_DENSE_SHARE = 0.25


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_segment_name() -> str:
    """Sorts in creation order across processes; unique without coordination."""
    return f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"


def _chunks(dim: int) -> tuple[int, int]:
    return (min(256, max(1, 65536 // max(dim, 1))), max(dim, 1))


def write_h5(path: Path, features: np.ndarray, keys: np.ndarray, attrs: dict | None = None) -> None:
    """Write one HDF5 segment (or the head file) atomically at ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dim = features.shape[1]
    with h5py.File(tmp, "w") as fh:
        for k, v in (attrs or {}).items():
            fh.attrs[k] = v
        fh.create_dataset("features", data=features, maxshape=(None, dim), chunks=_chunks(dim))
        fh.create_dataset("key", data=keys.astype("S64"), maxshape=(None,), chunks=(1024,))
    _publish(tmp, path)


def _publish(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class SegmentWriter:
    """Streams rows into a new segment (compaction), so memory stays one chunk whatever its size."""

    def __init__(self, path: Path, dim: int):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._fh = h5py.File(self.tmp, "w")
        self._features = self._fh.create_dataset("features", shape=(0, dim), maxshape=(None, dim),
                                                 dtype=np.float32, chunks=_chunks(dim))
        self._keys = self._fh.create_dataset("key", shape=(0,), maxshape=(None,), dtype="S64", chunks=(1024,))
        self.n_rows = 0

    def write(self, features: np.ndarray, keys: np.ndarray) -> None:
        n = len(keys)
        self._features.resize(self.n_rows + n, axis=0)
        self._keys.resize(self.n_rows + n, axis=0)
        self._features[self.n_rows:] = features
        self._keys[self.n_rows:] = keys
        self.n_rows += n

    def close(self) -> None:
        self._fh.close()
        _publish(self.tmp, self.path)

    def abandon(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


class SegmentFolder:
    """Where a cache's segments live, by name; see the module docstring for the kinds."""

    def __init__(self, head: Path):
        self.head = head
        self.segments_dir = head.with_name(head.name + ".segments")
        self.pending_dir = head.with_name(head.name + ".pending")

    def path_of(self, name: str) -> Path:
        if name == HEAD:
            return self.head
        kind, _, file = name.partition("/")
        return (self.pending_dir if kind == "pending" else self.segments_dir) / file

    def names(self) -> list[str]:
        """Every complete segment, in read order (temporary files excluded)."""
        names = [HEAD]
        for kind, folder, suffix in (("pending", self.pending_dir, ".npz"), ("segments", self.segments_dir, ".h5")):
            if folder.is_dir():
                names += [f"{kind}/{entry.name}" for entry in sorted(os.scandir(folder), key=lambda e: e.name)
                          if entry.name.endswith(suffix) and not entry.name.startswith(".")]
        return names

    def stale_temporaries(self, older_than_s: float) -> Iterator[Path]:
        """Leftovers of killed writers (an append in flight is younger than ``older_than_s``)."""
        cutoff = time.time() - older_than_s
        for folder in (self.segments_dir, self.pending_dir, self.head.parent):
            if folder.is_dir():
                for path in folder.glob(".*.tmp" if folder != self.head.parent else f".{self.head.name}.*.tmp"):
                    try:
                        if path.stat().st_mtime < cutoff:
                            yield path
                    except FileNotFoundError:
                        continue

    # -- reading ------------------------------------------------------------------------
    def read_keys(self, name: str) -> np.ndarray | None:
        """The ``key`` column (S64), or None when the segment is unreadable (logged)."""
        try:
            if name.endswith(".npz"):
                with np.load(self.path_of(name), allow_pickle=False) as npz:
                    return npz["key"]
            with h5py.File(self.path_of(name), "r") as fh:
                return fh["key"][:] if "key" in fh else np.zeros(0, "S64")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError) as exc:  # damaged by hand, or not ours
            log.warning("ignoring unreadable cache segment %s: %s", self.path_of(name), exc)
            return None

    def read_rows(self, name: str, positions: np.ndarray) -> np.ndarray:
        """Feature rows at ``positions`` (any order, repeats allowed). FileNotFoundError when
        compaction removed the segment meanwhile: the caller looks the keys up again."""
        if name.endswith(".npz"):
            with np.load(self.path_of(name), allow_pickle=False) as npz:
                return npz["features"][positions]
        with h5py.File(self.path_of(name), "r") as fh:
            dataset = fh["features"]
            unique, inverse = np.unique(positions, return_inverse=True)
            if len(unique) >= _DENSE_SHARE * dataset.shape[0]:
                lo, hi = int(unique[0]), int(unique[-1]) + 1
                return dataset[lo:hi][unique - lo][inverse]
            return dataset[unique][inverse]  # h5py wants increasing, unique indices

    def remove(self, names: Sequence[str]) -> None:
        for name in names:
            if name != HEAD:  # the head carries the identity; old rows in it stay
                self.path_of(name).unlink(missing_ok=True)
        if self.pending_dir.is_dir() and not any(self.pending_dir.glob("*.npz")):
            try:
                self.pending_dir.rmdir()
            except OSError:  # a .tmp of a killed old writer, or a new batch: leave it
                pass
