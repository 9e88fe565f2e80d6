"""Lesion maps of any slice: the model's lesion head applied to its hypercolumns.

A slice's hypercolumns give a probability per cell; upsampled to the slice (bilinear) they are
its lesion map; the lesion is where the map reaches the head's threshold inside the lungs, and
``lesion_fraction`` is its share of the lung (summary.py). Each slice's summary and grid of
probabilities are cached by the SHA-256 of its bytes, in ``features/lesion-maps/`` (a cache
per dense spec and head), so a slice seen before costs a read. Used by predict, evaluate, the
report, the service and studies.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.run_context import RunContext, worker_threads
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.dense.hypercolumns import HypercolumnExtractor
from feature_extractor.dense.slices import DenseSlice, read_dense
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import Record, with_keys

from ...estimators.lesion_head import LesionHead
from .lungs import lung_grid, lungs_from_grid
from ...records.lesion_summary import SUMMARY, LesionMap, LesionSummary, lesion_columns
from .summary import lesion_map_of

LESION_CACHE_DIR = "lesion-maps"


@dataclass(frozen=True)
class LesionMapIdentity:
    """What a lesion-map cache holds: maps of one dense spec and one head."""

    dense: FeatureSpec
    head_sha256: str

    def to_record(self) -> dict:
        return {"kind": "lesion maps", "dense_identity": json.dumps(self.dense.identity(), sort_keys=True),
                "head_sha256": self.head_sha256, "summary": ",".join(SUMMARY)}

    def cache_file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_record(), sort_keys=True).encode()).hexdigest()[:12]
        return f"lesion-{self.dense.backbone}-{digest}.h5"


def head_sha256(head: LesionHead) -> str:
    import joblib

    return joblib.hash(head, hash_name="sha1") + "-sha1"


class LesionMapper:
    """A model's lesion head applied to slices: summaries through the cache, full maps on demand."""

    def __init__(self, head: LesionHead, spec: FeatureSpec, context: RunContext | None = None,
                 lung_head: LesionHead | None = None):
        self.head = head
        self.lung_head = lung_head  # lungs.py: the lungs as radiologists draw them (None: the classical mask)
        self.spec = spec
        self.context = context or RunContext()
        self.extractor = HypercolumnExtractor(spec, self.context)
        self._cache: FeatureCache | None = None

    @property
    def threshold(self) -> float:
        return float(self.head.threshold_)

    @property
    def grid(self) -> int:
        return int(self.spec.grid)

    @property
    def grids(self) -> int:
        """Grids a cache row holds: the lesion's, and the lungs' with a lung head."""
        return 1 if self.lung_head is None else 2

    def _from_row(self, dense: DenseSlice, row: np.ndarray) -> LesionMap:
        g2 = self.grid ** 2
        cells = row[len(SUMMARY):len(SUMMARY) + g2].reshape(self.grid, self.grid)
        lung = row[len(SUMMARY) + g2:len(SUMMARY) + 2 * g2].reshape(self.grid, self.grid) if self.grids == 2 else None
        return self.full_map(dense, cells, lung)

    def cache(self) -> FeatureCache:
        if self._cache is None:
            heads = head_sha256(self.head) + ("" if self.lung_head is None else "+" + head_sha256(self.lung_head))
            identity = LesionMapIdentity(self.extractor.resolved_spec, heads)
            folder = Path(self.context.features_dir) / LESION_CACHE_DIR
            path = folder / identity.cache_file_name()
            self._cache = FeatureCache(path) if path.exists() else FeatureCache.create(
                folder, identity, len(SUMMARY) + self.grids * self.grid ** 2,
                {"what": "lesion summaries and probability grids (lesion, then lungs)"})
        return self._cache

    def probabilities(self, grid_features: np.ndarray) -> np.ndarray:
        g = grid_features.shape[0]
        return self.head.predict_proba(grid_features.reshape(-1, grid_features.shape[-1]))[:, 1].reshape(g, g)

    def full_map(self, dense: DenseSlice, cell_probability: np.ndarray, lung_grid: np.ndarray | None = None) -> LesionMap:
        """A slice's full-size map from its grids (``lung_grid``: the lung head's, None: the classical lungs)."""
        lungs = None if lung_grid is None else lungs_from_grid(lung_grid, dense, float(self.lung_head.threshold_))
        return lesion_map_of(dense, cell_probability, self.threshold, lungs)

    def summaries(self, records: Sequence[Record]) -> dict[str, LesionSummary | str]:
        """path -> summary (or why the slice could not be read), computing only the slices the
        cache does not hold."""
        records = with_keys(records)
        out: dict[str, LesionSummary | str] = {r.path: r.error for r in records if r.error}
        readable = [r for r in records if not r.error]
        cache = self.cache()
        present = cache.present([r.key for r in readable])
        todo = {r.key: r for r in readable if r.key not in present}  # one per distinct image
        if todo:
            key_of = {r.path: k for k, r in todo.items()}
            keys, rows = [], []

            def collect(key: str, row: np.ndarray) -> None:
                keys.append(key)
                rows.append(row)
                if len(keys) >= 64:
                    cache.append(keys, np.stack(rows))
                    keys.clear()
                    rows.clear()

            # Each slice's head and map in a thread while the CNN runs the next batch: on 2 cores
            # that work (a quarter of a slice's) otherwise waited for the CNN and the CNN for it.
            window = max(1, self.extractor.context.batch_size)
            with cache.lock(), ThreadPoolExecutor(worker_threads()) as post:
                pending = []
                for path, item, grid in self.extractor.batches([r.path for r in todo.values()],
                                                      dtype=np.float32):
                    if grid is None:
                        out[path] = item
                        continue
                    pending.append((key_of[path], post.submit(self._summary_row, item, grid)))
                    while pending and (len(pending) > window or pending[0][1].done()):
                        key, row = pending.pop(0)
                        collect(key, row.result())
                for key, row in pending:
                    collect(key, row.result())
                if keys:
                    cache.append(keys, np.stack(rows))
                cache.compact()
        failed_keys = {key_of[p] for p in out if p in key_of} if todo else set()
        for r in readable:  # a copy of an unreadable image shares its reason
            if r.key in failed_keys and r.path not in out:
                out[r.path] = next(out[p] for p, k in key_of.items() if k == r.key)
        cached = [r for r in readable if r.path not in out]
        if cached:
            vectors = cache.read([r.key for r in cached])
            for r, v in zip(cached, vectors):
                out[r.path] = LesionSummary.from_vector(v)
        return out

    def columns(self, records: Sequence[Record]) -> np.ndarray:
        """The classifier features of ``records``' lesion summaries, one row each (an error naming the first
        slice that cannot be mapped)."""
        return lesion_columns(self.summaries(records), [r.path for r in records])

    def _summary_row(self, dense: DenseSlice, grid_features: np.ndarray) -> np.ndarray:
        """A slice's cache row: its summary and its grid of cell probabilities."""
        probability = self.probabilities(grid_features)
        lungs = None if self.lung_head is None else lung_grid(self.lung_head, grid_features, dense)
        summary = self.full_map(dense, probability, lungs).summary
        return np.concatenate([summary.vector(), probability.ravel().astype(np.float32)]
                              + ([] if lungs is None else [lungs.ravel().astype(np.float32)]))

    def cached_map(self, path: str, key: str | None = None) -> LesionMap | None:
        """The lesion map of a slice whose grid is cached (no CNN: safe beside a running batch);
        None when it is not cached. ``key``: the file's SHA-256, when known. ImageDecodeError or OSError."""
        from covidct_core.provenance import sha256_file

        key = key or sha256_file(path)
        cache = self.cache()
        if key not in cache.present([key]):
            return None
        return self._from_row(read_dense(path), cache.read([key])[0])

    def lesion_map(self, path: str) -> LesionMap:
        """The full-size lesion map of one slice, from its cached grid when there is one (else the
        CNN runs); ImageDecodeError or OSError."""
        from covidct_core.provenance import sha256_file

        dense = read_dense(path)
        cache = self.cache()
        key = sha256_file(path)
        if key in cache.present([key]):
            return self._from_row(dense, cache.read([key])[0])
        return self._from_row(dense, self._summary_row(dense, self.extractor.grids([dense], np.float32)[0]))


def mapper_for(bundle, context: RunContext | None = None) -> LesionMapper | None:
    """The lesion mapper of a model bundle (None without a lesion head)."""
    if bundle.lesion_head is None or bundle.card.lesion is None:
        return None
    return LesionMapper(bundle.lesion_head, FeatureSpec.from_record(bundle.card.lesion["dense"]), context,
                        getattr(bundle, "lung_head", None))

