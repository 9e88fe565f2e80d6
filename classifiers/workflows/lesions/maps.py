"""The lungs and lesion of any slice: the model's segmentation network applied to it, once.

:meth:`LesionMapper.segment` is the one entry point for one slice (its lungs by side, the lesion's
probability and the lesion, at the slice's own pixels: records/lesion_summary.SliceSegmentation);
:meth:`LesionMapper.segment_slices` maps many, decoding one batch ahead of the network in threads and
turning each batch's probabilities into full-size maps in threads while the network runs the next.
Each slice's summary is cached by the SHA-256 of its bytes in ``features/lesion-maps/`` (a cache per
network and its settings), so a slice seen before costs a read; a command that also writes maps (or a
study's NIfTI) gets them from the same pass that makes the summaries (``summaries(..., on_map=...)``).
Used by predict, evaluate, the report, the service and studies.
"""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from covidct_core.run_context import RunContext, worker_threads
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import Record, with_keys
from feature_extractor.imaging.decode import ImageDecodeError
from feature_extractor.segmentation.encoder import Decoders, SegmentationNetwork
from feature_extractor.segmentation.slices import SegmentationSlice, read_segmentation_slice

from ...estimators.segmenter import LungLesionSegmenter
from ...records.lesion_summary import SUMMARY, LesionSummary, SliceSegmentation, lesion_columns
from ...settings import LesionSettings
from .summary import SEGMENTATION_VERSION, MinimumArea, segmentation_of

LESION_CACHE_DIR = "lesion-maps"
OnMap = Callable[[str, SliceSegmentation], None]


@dataclass(frozen=True)
class LesionMapIdentity:
    """What a summary cache holds: summaries of one network (backbone maps and decoders), one lesion
    cut-off and one minimum area."""

    maps: FeatureSpec
    decoders_sha256: str
    threshold: float
    minimum: MinimumArea

    def to_record(self) -> dict:
        return {"kind": "lesion summaries", "maps_identity": json.dumps(self.maps.identity(), sort_keys=True),
                "decoders_sha256": self.decoders_sha256, "threshold": self.threshold,
                "min_lesion_mm2": self.minimum.mm2, "min_lesion_px": self.minimum.px_at_512,
                "summary": ",".join(SUMMARY), "segmentation_version": SEGMENTATION_VERSION}

    def cache_file_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_record(), sort_keys=True).encode()).hexdigest()[:12]
        return f"lesion-{self.maps.backbone}-{digest}.h5"


class LesionMapper:
    """A model's segmentation network applied to slices: summaries through the cache, maps on demand."""

    def __init__(self, segmenter: LungLesionSegmenter, spec: FeatureSpec, settings: LesionSettings,
                 context: RunContext | None = None):
        self.segmenter = segmenter
        self.context = context or RunContext()
        self.minimum = MinimumArea(settings.min_lesion_mm2, settings.min_lesion_px)
        self.network = SegmentationNetwork(spec, Decoders(segmenter.members_, int(segmenter.width),
                                                          int(segmenter.output_stride)), self.context)
        self._cache: FeatureCache | None = None

    @property
    def threshold(self) -> float:
        return float(self.segmenter.threshold_)

    def cache(self) -> FeatureCache:
        if self._cache is None:
            identity = LesionMapIdentity(self.network.resolved_spec, self.network.decoders.sha256(), self.threshold,
                                         self.minimum)
            folder = Path(self.context.features_dir) / LESION_CACHE_DIR
            path = folder / identity.cache_file_name()
            self._cache = FeatureCache(path) if path.exists() else FeatureCache.create(
                folder, identity, len(SUMMARY), {"what": "lesion summaries of the segmentation network"})
        return self._cache

    # -- mapping ------------------------------------------------------------------------------
    def segment(self, path: str | Path) -> SliceSegmentation:
        """One slice's lungs and lesion (ImageDecodeError or OSError when it cannot be read)."""
        s = read_segmentation_slice(path)
        return self._segmentation(s, self.network.probabilities(s.network_input(self.network.side)[None])[0])

    def _segmentation(self, s: SegmentationSlice, probabilities: np.ndarray) -> SliceSegmentation:
        return segmentation_of(s, probabilities, self.threshold, self.minimum)

    def segment_slices(self, paths: Sequence[str], label: str = "lesion maps   "
                       ) -> Iterator[tuple[str, SliceSegmentation | str]]:
        """(path, its segmentation or why it cannot be read) for each path, in order, in batches (see the
        module docstring)."""
        side, size = self.network.side, max(1, self.context.batch_size)

        def load(path: str):
            try:
                s = read_segmentation_slice(path)
            except ImageDecodeError as exc:
                return str(exc)
            except OSError as exc:
                return f"cannot read file: {exc.strerror or exc}"
            return s, s.network_input(side)

        chunks = [list(paths[i:i + size]) for i in range(0, len(paths), size)]
        with ThreadPoolExecutor(worker_threads()) as pool, self.context.progress(label, len(paths)) as progress:
            pending = [pool.submit(load, p) for p in chunks[0]] if chunks else []
            finishing: list = []
            for i, chunk in enumerate(chunks):
                loaded = [f.result() for f in pending]
                if i + 1 < len(chunks):  # decode the next batch while the network runs
                    pending = [pool.submit(load, p) for p in chunks[i + 1]]
                good = [item for item in loaded if not isinstance(item, str)]
                p = iter(self.network.probabilities(np.stack([x for _, x in good]))) if good else iter(())
                done = [(path, item if isinstance(item, str) else pool.submit(self._segmentation, item[0], next(p)))
                        for path, item in zip(chunk, loaded)]
                yield from _finished(finishing)   # the previous batch's maps, made while this one ran
                finishing = done
                progress(len(chunk))
            yield from _finished(finishing)

    # -- summaries through the cache ---------------------------------------------------------
    def summaries(self, records: Sequence[Record], on_map: OnMap | None = None) -> dict[str, LesionSummary | str]:
        """path -> summary (or why the slice could not be mapped). Only slices the cache does not hold are
        mapped, unless ``on_map`` wants every slice's maps: then each readable slice is mapped once, here,
        and ``on_map(path, segmentation)`` is called in the records' order."""
        records = with_keys(records)
        out: dict[str, LesionSummary | str] = {r.path: r.error for r in records if r.error}
        readable = [r for r in records if not r.error]
        cache = self.cache()
        present = cache.present([r.key for r in readable])
        todo = {}
        for r in readable:  # one per distinct image; every one when its maps are wanted
            if on_map is not None or r.key not in present:
                todo.setdefault(r.key, r)
        if todo:
            self._map_and_cache(todo, out, on_map, present)
        failed = {r.key: out[r.path] for r in todo.values() if r.path in out}
        for r in readable:  # a copy of an unreadable image shares its reason
            if r.key in failed and r.path not in out:
                out[r.path] = failed[r.key]
        cached = [r for r in readable if r.path not in out]
        for r, v in zip(cached, cache.read([r.key for r in cached]) if cached else []):
            out[r.path] = LesionSummary.from_vector(v)
        return out

    def _map_and_cache(self, todo: dict[str, Record], out: dict, on_map: OnMap | None, present: set) -> None:
        cache = self.cache()
        keys, rows = [], []
        with cache.lock():
            for (key, r), (_, result) in zip(todo.items(), self.segment_slices([r.path for r in todo.values()])):
                if isinstance(result, str):
                    out[r.path] = result
                    continue
                if on_map is not None:
                    on_map(r.path, result)
                if key not in present:
                    keys.append(key)
                    rows.append(result.summary.vector())
                if len(keys) >= 64:
                    cache.append(keys, np.stack(rows))
                    keys, rows = [], []
            if keys:
                cache.append(keys, np.stack(rows))
            cache.compact()

    def columns(self, records: Sequence[Record]) -> np.ndarray:
        """The classifier features of ``records``' lesion summaries, one row each (an error naming the first
        slice that cannot be mapped)."""
        return lesion_columns(self.summaries(records), [r.path for r in records])


def _finished(items) -> Iterator[tuple[str, SliceSegmentation | str]]:
    for path, item in items:
        yield path, item if isinstance(item, str) else item.result()


def mapper_for(bundle, context: RunContext | None = None) -> LesionMapper | None:
    """The lesion mapper of a model bundle (None without a segmentation network)."""
    if bundle.segmenter is None or not (bundle.card.lesion or {}).get("maps"):
        return None
    lesion = bundle.card.lesion
    return LesionMapper(bundle.segmenter, FeatureSpec.from_record(lesion["maps"]),
                        LesionSettings.from_record(lesion.get("settings", {})), context)
