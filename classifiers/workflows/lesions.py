"""Lesion maps: a lesion head trained on radiologists' masks, and applied to any slice.

Training (``fit --lesion-data DIR``): every slice with an infection mask is read for dense
features (feature_extractor/hypercolumns.py); its lung cells (the expert lung mask where given,
else the product's own) are drawn at random, at most ``cells_per_slice`` a slice, so lesion
cells keep their share; a cell is lesion when the radiologist marked most of its lung. The head
(estimators/lesion_head.py) is chosen by patient-grouped CV and calibrated.

Applying (predict, evaluate, the report, the service, studies): a slice's hypercolumns give a
probability per cell; upsampled to the slice (bilinear) they are its lesion map; the lesion is
where the map reaches the head's threshold inside the lungs, and ``lesion_fraction`` is its
share of the lung. Each slice's map and summary are cached by the SHA-256 of its bytes, in
``features/lesion-maps/`` (a cache per dense spec and head), so a slice seen before costs a read.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.cache import FeatureCache
from feature_extractor.dataset import Record, with_keys
from feature_extractor.errors import CovidCTError
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.hypercolumns import DEFAULT_GRID, DEFAULT_INPUT, DenseSlice, HypercolumnExtractor, read_dense
from feature_extractor.images import ImageDecodeError, resize_map
from feature_extractor.lesion_data import LesionData, check_masks, slice_masks
from feature_extractor.run_context import RunContext, worker_threads

from ..estimators.lesion_head import DEFAULT_HEADS, LesionHead
from .model_card import N_LESION_COLUMNS

LESION_CACHE_DIR = "lesion-maps"
DEFAULT_CELLS_PER_SLICE = 200
MIN_CELL_LUNG = 0.5       # a cell is lung when its lung covers at least half of it
SUMMARY = ("lesion_fraction", "lesion_p_max", "lesion_p_mean", "lesion_left", "lesion_right",
           "lesion_peripheral", "lung_fraction", "lesion_area", "lung_status")
LUNG_STATUS = {0.0: None, 1.0: "lung mask: fallback to the lung crop's segmentation", 2.0: "no lung found"}
# The summaries that join a COVID classifier's features (fit --lesion-features): the disease,
# not how much lung the slice shows (slice position is a confound).
CLASSIFIER_SUMMARY = SUMMARY[:N_LESION_COLUMNS]


@dataclass(frozen=True)
class LesionSettings:
    """How the lesion head is trained.

    backbone : the dense features' backbone (default: the model's first with hypercolumn layers).
    input_side, grid : the dense FeatureSpec's input size and grid.
    cells_per_slice : lung cells drawn at random per training slice.
    heads : candidate classifiers (estimators/lesion_head.py HEADS).
    cv_folds : patient-grouped folds of the choice.
    seed : sampling and folds.
    """

    backbone: str | None = None
    input_side: int = DEFAULT_INPUT
    grid: int = DEFAULT_GRID
    cells_per_slice: int = DEFAULT_CELLS_PER_SLICE
    heads: tuple[str, ...] = DEFAULT_HEADS
    cv_folds: int = 3
    seed: int = 0


@dataclass
class LesionSummary:
    """One slice's lesion measurements (SUMMARY); ``None`` values where the slice has no lung."""

    lesion_fraction: float | None
    lesion_p_max: float
    lesion_p_mean: float | None
    lesion_left: float | None
    lesion_right: float | None
    lesion_peripheral: float | None
    lung_fraction: float
    lesion_area: float
    lung_status: float = 0.0   # LUNG_STATUS: the lung mask found, a fallback, or none

    @property
    def lung_note(self) -> str | None:
        return LUNG_STATUS.get(self.lung_status)

    def vector(self) -> np.ndarray:
        return np.array([np.nan if getattr(self, k) is None else getattr(self, k) for k in SUMMARY], np.float32)

    @classmethod
    def from_vector(cls, v: np.ndarray) -> "LesionSummary":
        return cls(*[None if np.isnan(x) else float(x) for x in v[:len(SUMMARY)]])

    def classifier_features(self) -> np.ndarray:
        """CLASSIFIER_SUMMARY as numbers (a slice without lung: no lesion)."""
        return np.array([0.0 if getattr(self, k) is None else getattr(self, k) for k in CLASSIFIER_SUMMARY],
                        np.float32)


@dataclass
class LesionMap:
    """A slice's lesion map at its own size: probability per pixel, its lungs and the lesion."""

    probability: np.ndarray   # (H, W) float32
    lungs: np.ndarray         # (H, W) bool
    threshold: float
    summary: LesionSummary
    grey: np.ndarray          # (H, W) the slice in the lung window, for pictures

    @property
    def lesion(self) -> np.ndarray:
        return (self.probability >= self.threshold) & self.lungs


def summarize(probability: np.ndarray, lungs: np.ndarray, threshold: float, fallback: bool = False) -> LesionSummary:
    """A slice's lesion summary from its full-size probability map and lung mask (``fallback``:
    the mask is the lung crop's, not the lesion lung mask's)."""
    from scipy import ndimage as ndi

    lesion = (probability >= threshold) & lungs
    n_lung = int(lungs.sum())
    area = lungs.size
    if n_lung == 0:
        return LesionSummary(None, float(probability.max(initial=0.0)), None, None, None, None, 0.0, 0.0, 2.0)
    cols = np.flatnonzero(lungs.any(axis=0))
    middle = (cols[0] + cols[-1] + 1) // 2  # between the lungs
    sides = []
    for part in (slice(0, middle), slice(middle, None)):
        lung_side = lungs[:, part]
        sides.append(float(lesion[:, part].sum() / lung_side.sum()) if lung_side.any() else None)
    depth = ndi.distance_transform_edt(lungs)
    rim = lungs & (depth <= np.percentile(depth[lungs], 33))  # the outer third of the lung
    n_lesion = int(lesion.sum())
    return LesionSummary(n_lesion / n_lung, float(probability[lungs].max()), float(probability[lungs].mean()),
                         sides[0], sides[1], float((lesion & rim).sum() / n_lesion) if n_lesion else 0.0,
                         n_lung / area, n_lesion / area, 1.0 if fallback else 0.0)


def lesion_map_of(dense: DenseSlice, cell_probability: np.ndarray, threshold: float) -> LesionMap:
    """A slice's full-size lesion map from its grid of cell probabilities (bilinear upsampling)."""
    probability = np.clip(resize_map(cell_probability.astype(np.float32), dense.shape), 0.0, 1.0)
    lungs = dense.lungs.mask
    return LesionMap(probability, lungs, threshold, summarize(probability, lungs, threshold, dense.lungs.note is not None),
                     dense.grey)


# -- training ------------------------------------------------------------------------------
def cell_shares(mask: np.ndarray, grid: int) -> np.ndarray:
    """Share of each grid cell a full-size mask covers, (grid, grid)."""
    return resize_map(mask.astype(np.float32), (grid * 8, grid * 8)).reshape(grid, 8, grid, 8).mean(axis=(1, 3))


def training_cells(grid_features: np.ndarray, infection: np.ndarray, lungs: np.ndarray, limit: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A slice's lung cells, at most ``limit`` drawn at random (so lesion cells keep their share:
    the calibrated probabilities then mean what they say): (cells, D) features and 0/1 labels."""
    g = grid_features.shape[0]
    lung = cell_shares(lungs, g).ravel()
    lesion = cell_shares(infection & lungs, g).ravel()
    cells = np.flatnonzero(lung >= MIN_CELL_LUNG)
    if len(cells) > limit:
        cells = np.sort(rng.choice(cells, limit, replace=False))
    labels = (lesion[cells] / lung[cells] >= 0.5).astype(int)
    # float16: bounded memory for every slice's cells (converted after sampling: the same values, 20x less work)
    return grid_features.reshape(-1, grid_features.shape[-1])[cells].astype(np.float16), labels


def lesion_extractor(spec: FeatureSpec, context: RunContext) -> HypercolumnExtractor:
    return HypercolumnExtractor(spec, context)


def dense_slices(extractor: HypercolumnExtractor, paths: Sequence[str], progress_label: str | None = None,
                 dtype=np.float16):
    """(path, DenseSlice or error text, grid features or None) for each path, in batches, decoding one
    batch ahead of the CNN; features as ``dtype`` (HypercolumnExtractor.grids)."""
    batch = extractor.context.batch_size

    side = extractor.input_side

    def load(path: str):  # decoded, masked and made the CNN's input in a thread
        try:
            dense = read_dense(path)
        except ImageDecodeError as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read file: {exc.strerror or exc}"
        return dense, dense.model_input(side)

    with ThreadPoolExecutor(worker_threads()) as pool, extractor.context.progress(progress_label or "lesion maps   ",
                                                                         len(paths)) as progress:
        chunks = [list(paths[i:i + batch]) for i in range(0, len(paths), batch)]
        pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
        for i, chunk in enumerate(chunks):
            loaded = [f.result() for f in pending]
            if i + 1 < len(chunks):
                pending = [pool.submit(load, p) for p in chunks[i + 1]]
            good = [item for item in loaded if not isinstance(item, str)]
            grids = iter(extractor.grids_of_inputs(np.stack([x for _, x in good]), dtype)) if good else iter(())
            for path, item in zip(chunk, loaded):
                yield (path, item, None) if isinstance(item, str) else (path, item[0], next(grids))
            progress(len(chunk))


def train_lesion_head(data: LesionData, spec: FeatureSpec, settings: LesionSettings | None = None,
                      context: RunContext | None = None) -> tuple[LesionHead, dict]:
    """A lesion head trained on the masked slices of ``data``; and the model card's record of it."""
    settings = settings or LesionSettings()
    context = context or RunContext()
    masked = data.with_masks
    if not masked:
        raise CovidCTError(f"--lesion-data {', '.join(data.folders)}: no slice has an infection mask; slice "
                           "labels alone (slices.csv) measure a lesion head (evaluate --lesion-data), they "
                           "cannot train one")
    check_masks(data)  # every mask fits its slice before the CNN runs
    extractor = lesion_extractor(spec, context)
    rng = np.random.default_rng(settings.seed)
    by_path = {s.path: s for s in masked}
    X, y, groups, failed = [], [], [], {}
    for path, item, grid in dense_slices(extractor, [s.path for s in masked], "lesion head   ", np.float32):
        if grid is None:
            failed[path] = item
            continue
        s = by_path[path]
        masks = slice_masks(s, item.shape)
        lungs = masks.lungs if masks.lungs is not None else item.lungs.mask
        cells, labels = training_cells(grid, masks.infection, lungs, settings.cells_per_slice, rng)
        X.append(cells)
        y.append(labels)
        groups += [s.group] * len(labels)
    if failed:
        path, reason = next(iter(failed.items()))
        raise CovidCTError(f"{len(failed)} lesion slices cannot be read, e.g. {path}: {reason}")
    X, y = np.concatenate(X), np.concatenate(y)
    head = LesionHead(settings.heads, settings.cv_folds, settings.seed).fit(X, y, np.array(groups))
    record = {"dense": extractor.resolved_spec.to_record(), "data": data.describe(), "head": head.describe(),
              "training_cells": {"n": int(len(y)), "n_lesion": int(y.sum()), "per_slice_at_most": settings.cells_per_slice,
                                 "lung": "the expert lung mask where given, else the product's own",
                                 "label": "lesion when the radiologist marked at least half of the cell's lung"},
              "settings": {"input_side": settings.input_side, "grid": settings.grid,
                           "heads": list(settings.heads), "cv_folds": settings.cv_folds, "seed": settings.seed},
              "notes": list(data.notes)}
    return head, record


# -- applying ------------------------------------------------------------------------------
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

    def __init__(self, head: LesionHead, spec: FeatureSpec, context: RunContext | None = None):
        self.head = head
        self.spec = spec
        self.context = context or RunContext()
        self.extractor = lesion_extractor(spec, self.context)
        self._cache: FeatureCache | None = None

    @property
    def threshold(self) -> float:
        return float(self.head.threshold_)

    @property
    def grid(self) -> int:
        return int(self.spec.grid)

    def cache(self) -> FeatureCache:
        if self._cache is None:
            identity = LesionMapIdentity(self.extractor.resolved_spec, head_sha256(self.head))
            folder = Path(self.context.features_dir) / LESION_CACHE_DIR
            path = folder / identity.cache_file_name()
            self._cache = FeatureCache(path) if path.exists() else FeatureCache.create(
                folder, identity, len(SUMMARY) + self.grid ** 2, {"what": "lesion summaries and probability grids"})
        return self._cache

    def probabilities(self, grid_features: np.ndarray) -> np.ndarray:
        g = grid_features.shape[0]
        return self.head.predict_proba(grid_features.reshape(-1, grid_features.shape[-1]))[:, 1].reshape(g, g)

    def full_map(self, dense: DenseSlice, cell_probability: np.ndarray) -> LesionMap:
        return lesion_map_of(dense, cell_probability, self.threshold)

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
                for path, item, grid in dense_slices(self.extractor, [r.path for r in todo.values()],
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

    def _summary_row(self, dense: DenseSlice, grid_features: np.ndarray) -> np.ndarray:
        """A slice's cache row: its summary and its grid of cell probabilities."""
        probability = self.probabilities(grid_features)
        summary = self.full_map(dense, probability).summary
        return np.concatenate([summary.vector(), probability.ravel().astype(np.float32)])

    def cached_map(self, path: str, key: str) -> LesionMap | None:
        """The lesion map of a slice whose grid is cached (no CNN: safe beside a running batch);
        None when it is not cached. ImageDecodeError or OSError."""
        cache = self.cache()
        if key not in cache.present([key]):
            return None
        grid = cache.read([key])[0][len(SUMMARY):].reshape(self.grid, self.grid)
        return self.full_map(read_dense(path), grid)

    def lesion_map(self, path: str) -> LesionMap:
        """The full-size lesion map of one slice, from its cached grid when there is one (else the
        CNN runs); ImageDecodeError or OSError."""
        from feature_extractor.provenance import sha256_file

        dense = read_dense(path)
        cache = self.cache()
        key = sha256_file(path)
        if key in cache.present([key]):
            grid = cache.read([key])[0][len(SUMMARY):].reshape(self.grid, self.grid)
        else:
            grid = self.probabilities(self.extractor.grids([dense], np.float32)[0])
        return self.full_map(dense, grid)


def mapper_for(bundle, context: RunContext | None = None) -> LesionMapper | None:
    """The lesion mapper of a model bundle (None without a lesion head)."""
    if bundle.lesion_head is None or bundle.card.lesion is None:
        return None
    return LesionMapper(bundle.lesion_head, FeatureSpec.from_record(bundle.card.lesion["dense"]), context)

