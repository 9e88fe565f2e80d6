"""Extraction on Ray Data: decoding in tasks, the CNN in an actor pool, results into the cache.

The pipeline: the records to extract (content key + absolute path) -> ``map_batches`` of
:func:`decode_batch` (stateless tasks: read, window, crop, resize) -> ``map_batches`` of
:class:`BackboneOnBatches` (an actor pool: each actor builds its backbone once, with the
weights the driver resolved, and checks their SHA-256) -> the driver, which streams every
finished batch into the feature cache as one segment.

Why the driver writes, not the workers: the cache's segments and its SQLite index stay on
the driver's disk (SQLite must not be shared over NFS), there is one writer to lock, and a
CNN batch (32 x 1-8 KB of features) is small next to the images, which workers read
themselves. Workers must therefore be able to read every image at the same absolute path as
the driver (a shared file system, or an object store mounted at the same path on every node)
and find the weights at the path the driver resolved (or download them, with imagenet).

Fault tolerance is Ray's: a dead actor is restarted and its unfinished batch retried
(``max_restarts``/``max_task_retries``); a killed driver loses only the batches not yet
written, and the rerun extracts only those (the cache knows the rest).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from covidct_core.run_context import Progress, RunContext

from ..cache.feature_cache import FeatureCache
from ..feature_spec import FeatureSpec
from ..imaging.dataset import Record
from .engine import ray_session

log = logging.getLogger(__name__)
_NO_ERROR = ""


def decode_batch(batch: dict[str, np.ndarray], spec: FeatureSpec, extractor_class: type) -> dict[str, np.ndarray]:
    """Model inputs of a batch of files; a file that fails gets a blank image and its reason.
    ``extractor_class``: the driver's extractor (extract.FeatureExtractor), built here without a model."""
    extractor = extractor_class(spec)  # no model: decoding only
    height, width = spec.input_size
    images = np.zeros((len(batch["path"]), height, width, 3), np.uint8)
    errors, fallbacks = [], []
    for i, path in enumerate(batch["path"]):
        image, fallback = extractor.load(str(path))
        if isinstance(image, str):
            errors.append(image)
        else:
            images[i] = image
            errors.append(_NO_ERROR)
        fallbacks.append(fallback or _NO_ERROR)
    return {"key": batch["key"], "path": batch["path"], "image": images,
            "error": np.array(errors, dtype=object), "crop_fallback": np.array(fallbacks, dtype=object)}


class BackboneOnBatches:
    """A Ray Data actor: the frozen backbone, built once per actor."""

    def __init__(self, spec: FeatureSpec, batch_size: int, runtime: str, features_dir: str, extractor_class: type):
        self.extractor = extractor_class(spec, RunContext(features_dir, batch_size=batch_size, offline=None,
                                                           runtime=runtime))
        self.extractor.model  # build now (and check the weights' SHA-256), not on the first batch
        self.extractor.forward()  # and its runtime's session (the ONNX file is exported once, by content)
        self.dim = self.extractor.feature_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.array([e == _NO_ERROR for e in batch["error"]], dtype=bool)
        features = np.zeros((len(ok), self.dim), np.float32)
        if ok.any():
            features[ok] = self.extractor.features_of(np.ascontiguousarray(batch["image"][ok]))
        return {"key": batch["key"], "path": batch["path"], "features": features,
                "error": batch["error"], "crop_fallback": batch["crop_fallback"]}


DECODE_CPUS = 0.5  # each decoding task; at least one must always fit beside the CNN actors


def cnn_workers(ray, workers: int | None, gpus_per_worker: float) -> int:
    """--workers, else one actor per GPU share the cluster has, else one."""
    if workers:
        return workers
    if gpus_per_worker:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus_per_worker))
    return 1


def actor_cpus(workers: int, cluster_cpus: float, gpus_per_worker: float = 0.0, cluster_gpus: float = 0.0) -> float:
    """CPUs each CNN actor reserves: one, or less when ``workers`` actors would leave no room for a
    decoding task (with every CPU held by an actor, the decoding tasks could never be scheduled
    and extraction would wait forever). EngineError when the cluster cannot hold them."""
    from covidct_core.run_settings import EngineError

    if gpus_per_worker and workers * gpus_per_worker > cluster_gpus + 1e-9:
        raise EngineError(f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs "
                          f"{workers * gpus_per_worker:g} GPUs; this Ray cluster has {cluster_gpus:g}")
    room = cluster_cpus - DECODE_CPUS
    if room <= 0 or workers > cluster_cpus:
        raise EngineError(f"--workers {workers}: this Ray cluster has {cluster_cpus:g} CPUs; it holds at most "
                          f"{max(1, int(cluster_cpus))} CNN workers beside the decoding")
    return min(1.0, room / workers)


def extract_on_ray(extractor: Any, todo: Sequence[Record], cache: FeatureCache,
                   progress: Progress, report: Any) -> dict[str, str]:
    """Extract ``todo`` on Ray and append it to ``cache``; returns key -> reason for failures.
    ``extractor``: the driver's FeatureExtractor (extract.py), whose class the workers build;
    ``report``: its ExtractionReport, which gets the engine and the crop fallbacks."""
    settings = extractor.context.engine
    spec = extractor.resolved_spec  # the workers must load exactly these weights
    batch_size = extractor.context.batch_size
    failed: dict[str, str] = {}
    with ray_session(settings) as ray:
        if not log.isEnabledFor(logging.INFO):  # Ray Data's execution notes only with --verbose
            logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # our progress bar counts images
        context.print_on_execution_start = False
        workers = cnn_workers(ray, settings.workers, settings.gpus_per_worker)
        resources = ray.cluster_resources()
        cpus = actor_cpus(workers, resources.get("CPU", 0.0), settings.gpus_per_worker, resources.get("GPU", 0.0))
        where = settings.ray_address or "local Ray"
        report.device = (f"ray: {workers} CNN worker{'s' * (workers > 1)}"
                         + (f" x {settings.gpus_per_worker:g} GPU" if settings.gpus_per_worker else "")
                         + f", {where}")
        report.engine = settings.record(workers)
        path_of = {r.key: r.path for r in todo}
        items = [{"key": r.key, "path": os.path.abspath(r.path)} for r in todo]
        dataset = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // batch_size)))
        dataset = dataset.map_batches(decode_batch, fn_kwargs={"spec": spec, "extractor_class": type(extractor)}, batch_size=batch_size,
                                      batch_format="numpy", num_cpus=DECODE_CPUS)  # unfused: decoding stays in tasks
        dataset = dataset.map_batches(
            BackboneOnBatches, fn_constructor_kwargs={"spec": spec, "batch_size": batch_size,
                                                      "runtime": extractor.context.runtime,
                                                      "features_dir": os.path.abspath(extractor.context.features_dir),
                                                      "extractor_class": type(extractor)},
            batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus, num_gpus=settings.gpus_per_worker or None)  # Ray Data restarts dead actors and retries
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.array([e == _NO_ERROR for e in batch["error"]], dtype=bool)
            if ok.any():
                cache.append([str(k) for k in batch["key"][ok]], batch["features"][ok],
                             provenance=report.engine)
            failed.update({str(k): str(e) for k, e in zip(batch["key"][~ok], batch["error"][~ok])})
            report.crop_fallbacks.update({path_of[str(k)]: str(f) for k, f in zip(batch["key"], batch["crop_fallback"])
                                          if f != _NO_ERROR})
            progress(len(ok))
    return failed
