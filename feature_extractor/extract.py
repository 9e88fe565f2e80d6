"""Turn records into cached feature vectors with a frozen backbone.

Only images whose SHA-256 is not in the cache are decoded and run through the CNN; when all
are cached no model is built (and, with file or imagenet weights, TensorFlow is not imported).
Decoding runs in a thread pool one batch ahead of inference, so the CNN is kept busy.
"""
from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from covidct_core.errors import ModelBundleError, SettingsError
from covidct_core.provenance import command_line
from covidct_core.run_context import RunContext, worker_threads
from covidct_core.run_settings import TENSORFLOW

from .backbones import preprocess_function
from .cache.feature_cache import FeatureCache, find_cache
from .feature_spec import FeatureSpec, crop_version
from .imaging.dataset import DICOM_SUFFIXES, Dataset, Record, load_datasets, with_keys
from .imaging.decode import ImageDecodeError, PreparedImage, prepare_file
from .runtimes.inference import runtime_device
from .weights import NONE, NONE_WARNING, ResolvedWeights, build_with_weights, resolve_weights


@dataclass
class ExtractionReport:
    spec: FeatureSpec              # with the weights resolved
    cache_path: str
    records: list[Record]          # with keys; unreadable or undecodable ones carry .error
    n_cached: int = 0
    n_new: int = 0
    device: str | None = None      # None when no CNN ran; with ray, the workers
    engine: dict = field(default_factory=lambda: {"engine": "local"})  # provenance: engine, workers
    seconds: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)  # path -> reason
    crop_fallbacks: dict[str, str] = field(default_factory=dict)  # path -> why the crop found nothing

    @property
    def n_failed(self) -> int:
        return len(self.failed)

    def summary(self) -> str:
        text = f"{self.spec.backbone}: {self.n_cached} cached, {self.n_new} new"
        if self.failed:
            text += f", {self.n_failed} failed"
        if self.crop_fallbacks:
            text += f", {len(self.crop_fallbacks)} without {self.crop_target} found (full image used)"
        text += f" -> {self.cache_path}"
        if self.device:
            text += f" ({self.device}, {self.seconds:.1f} s)"
        return text

    def warnings(self) -> list[str]:
        """What the user must know about these features, one line each."""
        out = []
        if self.spec.weights.source == NONE:
            out.append("weights=none is random init; these features are for tests only")
        if self.crop_fallbacks:
            out.append(f"no plausible {self.crop_target} found in {len(self.crop_fallbacks)} images; their full "
                       "image was used")
        return out

    @property
    def crop_target(self) -> str:
        return "body" if self.spec.crop == "body" else "lungs"


class FeatureExtractor:
    """A frozen backbone with its weights, reading and filling one feature cache.

    Parameters
    ----------
    spec : FeatureSpec
        The backbone and every setting that changes the features. A spec whose
        ``weights_sha256`` is set (a saved model's) demands exactly those weights.
    context : RunContext, optional
        Features folder, batch size, offline mode and progress reporting.
    """

    def __init__(self, spec: FeatureSpec, context: RunContext | None = None):
        if not spec.is_current:
            raise SettingsError(
                f"{spec.backbone} features were cropped by version {spec.crop_version} of the "
                f"{spec.crop} crop; this version crops with version {crop_version(spec.crop)}: "
                f"extract and fit again with --crop {spec.crop}")
        self.spec = spec
        self.context = context or RunContext()
        self._model = None
        self._weights: ResolvedWeights | None = None
        self._forward = None
        self._cache: FeatureCache | None = None  # found once: a service opens it for every request
        self._compaction_checked = False

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    @property
    def weights(self) -> ResolvedWeights:
        """Resolved weights, hashed; builds the model only when the hash needs it."""
        if self._weights is None:
            weights = resolve_weights(self.spec.backbone_spec, self.spec.weights, self.context.offline)
            if weights.sha256 is None:  # imagenet to download, or random init to hash
                self._model, weights = self._build(weights)
            expected = self.spec.weights_sha256
            if expected is not None and weights.sha256 != expected:
                raise ModelBundleError(
                    f"{self.spec.backbone} features were made with weights of SHA-256 {expected[:16]}..., "
                    f"but the weights at hand ({self.spec.weights}) have {str(weights.sha256)[:16]}...; "
                    f"pass --weights {self.spec.backbone}=FILE with the weights they were made with")
            self._weights = weights
        return self._weights

    @property
    def resolved_spec(self) -> FeatureSpec:
        """The spec with the weights' SHA-256 (and where they were found)."""
        weights = self.weights
        return self.spec.with_weights(weights.sha256, weights.path)

    @property
    def model(self):
        """The frozen keras model, built (and its weights loaded) on first use."""
        if self._model is None:
            self._model, self._weights = self._build(self.weights)
        return self._model

    def _build(self, weights: ResolvedWeights):
        return build_with_weights(self.spec.backbone_spec, weights, self.spec.input_size,
                                  self.spec.pooling, self.spec.precision)

    @property
    def feature_dim(self) -> int:
        """Known from the backbone for avg/avgmax; multiscale needs the model's graph."""
        dim = self.spec.backbone_spec.feature_dim
        if self.spec.pooling == "avg":
            return dim
        if self.spec.pooling == "avgmax":
            return 2 * dim
        if self.context.runtime != TENSORFLOW:  # from the exported file when it is cached: no keras model
            shape = (1, *self.spec.input_size, 3)
            return int(np.asarray(self.forward()(self.preprocess(np.zeros(shape, np.uint8)))).shape[-1])
        return int(self.model.output_shape[-1])

    def open_cache(self) -> FeatureCache:
        if self._cache is not None and self._cache.path.exists():
            return self._cache
        spec = self.resolved_spec
        existing = find_cache(self.context.features_dir, spec)
        if existing is not None:  # no model needed to know its width
            self._cache = existing
            return existing
        provenance = {"command": command_line()}
        if spec.weights.source == NONE:
            provenance["warning"] = NONE_WARNING
        self._cache = FeatureCache.create(self.context.features_dir, spec, self.feature_dim, provenance)
        return self._cache

    def extract(self, records: Sequence[Record]) -> ExtractionReport:
        """Make sure every readable record has features in the cache."""
        start = time.perf_counter()
        records = with_keys(records)
        cache = self.open_cache()
        report = ExtractionReport(self.resolved_spec, str(cache.path), records)
        todo, report.n_cached = _split_cached(records, cache)
        n_unreadable = sum(1 for r in records if r.error)
        with self.context.progress(f"{self.spec.backbone:<14}", len(records)) as progress:
            # Nothing new: small segments left by a killed writer are merged on the first call only.
            if todo or (not self._compaction_checked and cache.needs_compaction()):
                with cache.lock():  # one writer per cache; a second extract waits here
                    todo, report.n_cached = _split_cached(records, cache)
                    progress(report.n_cached + n_unreadable)
                    if todo:
                        failed_keys = self._run(list(todo.values()), cache, progress, report)
                        report.n_new = sum(1 for r in records if not r.error and r.key in todo
                                           and r.key not in failed_keys)
                        report.records = [replace(r, error=failed_keys[r.key])
                                          if not r.error and r.key in failed_keys else r for r in records]
                    cache.compact()  # this run's small segments into one; bounded, never the whole cache
            else:
                progress(report.n_cached + n_unreadable)
        self._compaction_checked = True
        report.failed = {r.path: r.error for r in report.records if r.error}
        report.seconds = time.perf_counter() - start
        return report

    def prepare(self, path: str | Path) -> PreparedImage:
        """Read and decode one file (and crop it, with crop lungs), as extraction does.

        Raises ImageDecodeError or OSError.
        """
        return prepare_file(str(path), self.spec.window, Path(path).suffix.lower() in DICOM_SUFFIXES, self.spec.crop)

    def load(self, path: str | Path) -> tuple[np.ndarray | str, str | None]:
        """The model input of one file, else why not; and why the crop fell back, if it did."""
        try:
            prepared = self.prepare(path)
        except ImageDecodeError as exc:
            return str(exc), None
        except OSError as exc:
            return f"cannot read file: {exc.strerror or exc}", None
        return prepared.model_input(self.spec.input_size), prepared.crop_fallback

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> the float input the backbone's keras preprocessing expects."""
        return preprocess_function(self.spec.backbone_spec)(images.astype(np.float32))

    def features_of(self, images: np.ndarray, eager: bool = False) -> np.ndarray:
        """Features of an (N, H, W, 3) uint8 batch at the input size, no cache involved.

        ``eager``: call the model directly (one-off batches) instead of the compiled
        predict_on_batch (worth it when batches repeat: tracing costs 0.3-0.7 s a model).
        """
        run = self.forward(eager)
        x = self.preprocess(images)
        feats = np.asarray(run(x), dtype=np.float32)
        if self.spec.tta == "flip":
            feats = (feats + np.asarray(run(np.ascontiguousarray(x[:, :, ::-1, :])), np.float32)) / 2
        return feats

    def forward(self, eager: bool = False):
        """The CNN's forward pass on the context's runtime (TensorFlow: eager for one-off batches)."""
        if self.context.runtime == TENSORFLOW:
            model = self.model
            return (lambda x: model(x, training=False)) if eager else model.predict_on_batch
        if self._forward is None:
            from .runtimes.inference import forward

            # The keras model only when the runtime's file must be exported: a cached export runs alone.
            self._forward = forward(self.context.runtime, lambda: self.model, self.resolved_spec.identity())
        return self._forward

    def _run(self, todo: list[Record], cache: FeatureCache, progress, report: ExtractionReport
             ) -> dict[str, str]:
        """Extract and append ``todo``; returns key -> reason for images that failed."""
        if self.context.engine.is_ray:
            from .runtimes.ray_extract import extract_on_ray

            return extract_on_ray(self, todo, cache, progress, report)
        report.device = runtime_device(self.context.runtime)
        crop_fallbacks = report.crop_fallbacks
        batch_size = self.context.batch_size
        batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        failed: dict[str, str] = {}

        def load(rec: Record):
            image, fallback = self.load(rec.path)
            if fallback:
                crop_fallbacks[rec.path] = fallback
            return image

        with ThreadPoolExecutor(max_workers=worker_threads()) as pool:
            pending: list[Future] = [pool.submit(load, r) for r in batches[0]] if batches else []
            for i, batch in enumerate(batches):
                loaded = [f.result() for f in pending]
                if i + 1 < len(batches):  # decode the next batch while the CNN runs
                    pending = [pool.submit(load, r) for r in batches[i + 1]]
                readable = [(r, a) for r, a in zip(batch, loaded) if isinstance(a, np.ndarray)]
                failed.update({r.key: a for r, a in zip(batch, loaded) if isinstance(a, str)})
                if readable:
                    feats = self.features_of(np.stack([a for _, a in readable]), eager=len(batches) == 1)
                    cache.append([r.key for r, _ in readable], feats)
                progress(len(batch))
        return failed


class DatasetExtraction:
    """extract: every image of a dataset through each spec's backbone, into the cache.

    Every spec's weights are checked before any CNN runs; iterating extracts one backbone
    at a time and yields its report.
    """

    def __init__(self, data: str | Path | Sequence[str | Path], specs: Sequence[FeatureSpec],
                 context: RunContext | None = None):
        self.context = context or RunContext()
        self.dataset: Dataset = load_datasets(data, labeled=False)  # labels are fit's and evaluate's business
        self.extractors = [FeatureExtractor(spec, self.context) for spec in specs]
        for ex in self.extractors:  # missing files, offline without the file: fail now
            resolve_weights(ex.spec.backbone_spec, ex.spec.weights, self.context.offline)

    def summary(self) -> str:
        sources = self.dataset.sources
        per_source = "" if len(sources) < 2 else " (" + ", ".join(
            f"{s}: {sum(r.source == s for r in self.dataset.records)}" for s in sources) + ")"
        return (f"{len(self.dataset.records)} images in {self.dataset.root} ({self.dataset.layout} layout)"
                + per_source)

    def __iter__(self) -> Iterator[ExtractionReport]:
        records: Sequence[Record] = self.dataset.records
        for extractor in self.extractors:
            report = extractor.extract(records)
            records = report.records  # keys computed once for all backbones
            yield report


def _split_cached(records: Sequence[Record], cache: FeatureCache) -> tuple[dict[str, Record], int]:
    """Images still to extract (one per distinct key) and how many records are cached."""
    index = cache.present([r.key for r in records if not r.error])
    todo: dict[str, Record] = {}
    n_cached = 0
    for rec in records:
        if rec.error:
            continue
        if rec.key in index:
            n_cached += 1
        else:
            todo.setdefault(rec.key, rec)  # identical bytes are extracted once
    return todo, n_cached
