"""The feature cache: one per FeatureSpec, rows keyed by the SHA-256 of the image bytes.

A cache's identity is its FeatureSpec (feature_spec.py): everything that changes a feature
vector. Its file (``<name>.h5``, the head) is named by a short hash of that identity and
carries it in full in its attributes, plus provenance (library versions, when, by which
command). Rows are keyed by the SHA-256 of the image bytes, so a renamed or moved file is
found again and a changed one is extracted anew. Caches of format 1 (named by an older
spelling of the identity) are found by their attributes and keep working.

Growing without rewrites: rows land in immutable segment files (``<name>.h5.segments/``,
cache/segments.py), each written to a temporary name and renamed, so a segment is there whole
or not at all and a kill -9 loses at most the batch in flight. A key index in SQLite
(``<name>.h5.index.sqlite``, cache/index.py) finds rows without opening every segment; it is
derived from the segments and rebuilt when lost. An append costs its own rows whatever the
cache's size. ``compact`` merges small segments into bigger ones, in bounded memory, and never
touches big ones. Caches written before segments keep their rows in the head (read as the
first segment, never rewritten) and maybe in ``<name>.h5.pending/*.npz`` batches (read as
segments; compaction moves them into HDF5 segments).

Concurrency: appends need no lock (unique segment names; SQLite serialises index writes).
Extract takes the writer lock (``<name>.h5.lock``) for a whole run so two runs do not extract
the same images, and compaction runs under it.

Datasets: ``features`` (N, D) float32 and ``key`` (N,) SHA-256 hex. Nothing about the image
(path, label, patient) is stored: the dataset knows it, and a cache may be shared.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence, TypeVar

import h5py
import numpy as np

from covidct_core.errors import FeatureCacheError, SettingsError
from covidct_core.provenance import library_versions, utc_now

from ..feature_spec import FORMAT_VERSION, FeatureSpec
from .index import IndexDamaged, KeyIndex
from .segments import HEAD, SegmentFolder, SegmentWriter, new_segment_name, write_h5

log = logging.getLogger(__name__)
T = TypeVar("T")


class CacheIdentity(Protocol):
    """What a cache of rows keyed by image SHA-256 is of: a FeatureSpec, or derived rows."""

    def cache_file_name(self) -> str: ...

    def to_record(self) -> dict: ...

# Compaction writes segments of about this many bytes of features; a segment under an eighth
# of it is "small" and gets merged. Memory while compacting: one chunk of rows.
SEGMENT_BYTES = 256 * 2**20
_COPY_CHUNK_BYTES = 32 * 2**20
_STALE_TMP_S = 3600


@dataclass(frozen=True)
class Compaction:
    segments_merged: int = 0
    segments_written: int = 0
    rows_copied: int = 0
    dead_segments_removed: int = 0


class FeatureCache:
    """One cache: its head file, segments and key index. Opened per operation; no handle outlives a call."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.folder = SegmentFolder(self.path)
        self.index = KeyIndex(self.path.with_name(self.path.name + ".index.sqlite"), self.folder)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    @property
    def segments_dir(self) -> Path:
        return self.folder.segments_dir

    @property
    def pending_dir(self) -> Path:
        return self.folder.pending_dir

    # -- creation and locking -------------------------------------------------------------
    @classmethod
    def create(cls, features_dir: str | Path, spec: FeatureSpec | CacheIdentity, feature_dim: int,
               provenance: dict | None = None) -> "FeatureCache":
        """A new, empty cache for ``spec`` (resolved weights); see also :func:`find_cache`. Any
        other identity with a file name and a record (the lesion maps' cache) works the same way."""
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
                write_h5(cache.path, np.zeros((0, feature_dim), np.float32), np.zeros(0, "S64"), attrs)
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
    @property
    def attrs(self) -> dict:
        try:
            with h5py.File(self.path, "r") as fh:
                return {k: (v.item() if hasattr(v, "item") and v.ndim == 0 else v) for k, v in fh.attrs.items()}
        except OSError as exc:
            raise FeatureCacheError(f"cannot read feature cache {self.path} ({exc}); delete it "
                                    "to extract again") from None

    @cached_property
    def spec(self) -> FeatureSpec:
        """What the features are; raises SettingsError for a cache of an unreadable format."""
        attrs = self.attrs
        return FeatureSpec.from_record(attrs, int(attrs.get("format_version", 1)))

    @cached_property
    def feature_dim(self) -> int:  # fixed when the file is made: read once (a request reads it twice)
        return int(self.attrs["feature_dim"])

    def _indexed(self, query: Callable[[KeyIndex], T]) -> T:
        """``query`` on an index in step with the segment files; a damaged index is rebuilt."""
        for attempt in range(2):
            try:
                self.index.sync()
                return query(self.index)
            except IndexDamaged as exc:
                if attempt:
                    raise FeatureCacheError(f"cannot rebuild the key index of {self.path}: {exc}") from None
                log.warning("the key index of %s is damaged (%s); rebuilding it from the segments",
                            self.path.name, exc)
                self.index.delete()
            except OSError as exc:
                raise FeatureCacheError(f"cannot use feature cache {self.path} ({exc})") from None
        raise AssertionError("unreachable")

    def __len__(self) -> int:
        return self._indexed(len)

    def keys(self) -> list[str]:
        """Every key with features, each once."""
        return self._indexed(KeyIndex.keys)

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of ``keys`` have features."""
        return set(self._indexed(lambda index: index.locate(keys)))

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """Features for ``keys`` in that order; a missing key raises FeatureCacheError."""
        for _ in range(10):
            where = self._indexed(lambda index: index.locate(keys))
            missing = sum(1 for k in keys if k not in where)
            if missing:
                raise FeatureCacheError(f"{missing} of {len(keys)} images have no features in "
                                        f"{self.path}; run extract first")
            by_segment: dict[str, list[int]] = defaultdict(list)
            for i, key in enumerate(keys):
                by_segment[where[key][0]].append(i)
            out = np.empty((len(keys), self.feature_dim), dtype=np.float32)
            try:
                for name, slots in by_segment.items():
                    positions = np.fromiter((where[keys[i]][1] for i in slots), np.int64, len(slots))
                    out[slots] = self.folder.read_rows(name, positions)
                return out
            except FileNotFoundError:  # compacted meanwhile: its rows moved; look again
                continue
        raise FeatureCacheError(f"{self.path} kept changing while being read; try again")

    def segments(self) -> dict[str, int]:
        """Segment name -> rows it serves (diagnostics, tests, benchmarks)."""
        return self._indexed(KeyIndex.live_rows)

    def has_pending(self) -> bool:
        """Whether batches of the pre-segment writer are still waiting to be compacted."""
        return self.pending_dir.is_dir() and any(self.pending_dir.glob("*.npz"))

    def needs_compaction(self, segment_bytes: int = SEGMENT_BYTES) -> bool:
        """Pre-segment batches to move, small segments due a merge, or dead ones to delete."""
        live = self.segments()
        return (any(rows == 0 for name, rows in live.items() if name != HEAD)
                or bool(plan_merges(self._in_order(live), _target_rows(self.feature_dim, segment_bytes))))

    def _in_order(self, live: dict[str, int]) -> list[tuple[str, int]]:
        return [(n, live[n]) for n in self.folder.names() if n in live and n != HEAD]

    # -- writing --------------------------------------------------------------------------
    def append(self, keys: Sequence[str], features: np.ndarray, provenance: dict | None = None) -> None:
        """Add rows as one new segment, atomically (the segment is whole or absent).

        ``provenance`` (how they were made: engine, workers) goes into the segment's attributes.
        """
        if not len(keys):
            return
        self.segments_dir.mkdir(exist_ok=True)
        name = new_segment_name()
        key_column = np.array([k.encode() for k in keys], dtype="S64")
        attrs = {"provenance": json.dumps(provenance)} if provenance else None
        write_h5(self.segments_dir / name, np.asarray(features, np.float32), key_column, attrs)
        # Killed here: the segment is on disk and the next sync indexes it.
        self._indexed(lambda index: index.add(f"segments/{name}", key_column))

    def compact(self, segment_bytes: int = SEGMENT_BYTES) -> Compaction:
        """Merge small segments (and pre-segment batches) into segments of ``segment_bytes``
        (see :func:`plan_merges`); delete segments whose rows all live elsewhere.

        Call with the lock held. Only rows the index serves are copied, a chunk at a time, so
        memory stays bounded and the cost is that of the small segments, never the cache's.
        """
        dim = self.feature_dim
        chunk_rows = max(256, _COPY_CHUNK_BYTES // (4 * dim))
        for tmp in self.folder.stale_temporaries(_STALE_TMP_S):
            tmp.unlink(missing_ok=True)
        segments = self._in_order(self.segments())
        dead = [name for name, rows in segments if rows == 0]
        if dead:
            self._forget(dead)
        groups = plan_merges([(n, r) for n, r in segments if r], _target_rows(dim, segment_bytes))
        stats = {"segments_merged": 0, "segments_written": 0, "rows_copied": 0}
        for group in groups:
            self.segments_dir.mkdir(exist_ok=True)
            new = new_segment_name()
            writer = SegmentWriter(self.segments_dir / new, dim)
            moved: list[bytes] = []
            try:
                for name in group:
                    keys, positions = self.index.rows_of(name)
                    for start in range(0, len(keys), chunk_rows):
                        part = keys[start:start + chunk_rows]
                        writer.write(self.folder.read_rows(name, positions[start:start + chunk_rows]),
                                     np.array([k.hex().encode() for k in part], dtype="S64"))
                    moved += keys
            except BaseException:
                writer.abandon()
                raise
            writer.close()
            # Killed here: the new segment holds copies nobody points at; it is dead and goes
            # at the next compaction. Killed after replace: the old files are dead likewise.
            self.index.replace(group, f"segments/{new}", moved)
            self.folder.remove(group)
            stats["segments_merged"] += len(group)
            stats["segments_written"] += 1
            stats["rows_copied"] += len(moved)
        return Compaction(**stats, dead_segments_removed=len(dead))

    def _forget(self, names: Sequence[str]) -> None:
        self.index.forget(names)
        self.folder.remove(names)


def _target_rows(dim: int, segment_bytes: int) -> int:
    return max(1024, segment_bytes // (4 * dim))


TINY_ROWS = 1024  # a segment of one extract batch or one run: always merged with its like
FANOUT = 4        # a size tier is merged once it holds this many segments


def plan_merges(segments: Sequence[tuple[str, int]], target_rows: int) -> list[list[str]]:
    """Which segments to merge, as groups (each becomes one segment of up to ~target_rows).

    ``segments``: (name, rows served) in read order. Size-tiered, as in log-structured
    stores, so a row is copied about log4(target / 1024) times in its life and an append never
    drags a bigger segment into its merge: pre-segment batches always move; tiny segments
    (< 1024 rows, one run's batches) merge when there are two; bigger ones merge when four of
    the same size tier (a factor 4 apart) are there; segments of 1/8 of the target or more
    are final.
    """
    tiers: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for name, rows in segments:
        if name.startswith("pending/"):
            tiers[-1].append((name, rows))
        elif rows < target_rows // 8:
            tiers[0 if rows < TINY_ROWS else 1 + int(math.log(rows / TINY_ROWS, FANOUT))].append((name, rows))
    groups: list[list[str]] = []
    for tier, members in sorted(tiers.items()):
        if not (tier == -1 or (tier == 0 and len(members) > 1) or len(members) >= FANOUT):
            continue
        group, size = [], 0
        for name, rows in members:
            group.append(name)
            size += rows
            if size >= target_rows:
                groups.append(group)
                group, size = [], 0
        if len(group) > 1 or (group and tier == -1):
            groups.append(group)
    return groups


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
