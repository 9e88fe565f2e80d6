"""How a command runs, as opposed to what it computes: one :class:`RunContext` per command.

Nothing here changes a number: two runs that differ only in their context give the same
features and the same models. The feature settings that do change numbers are a
:class:`~feature_extractor.feature_spec.FeatureSpec`.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager

from .runtimes.engine import EngineSettings
from .runtimes.inference import default_runtime

Progress = Callable[[int], None]  # called with the number of images just finished
ProgressFactory = Callable[[str, int], ContextManager[Progress]]  # (label, total) -> a Progress


def worker_threads() -> int:
    """Threads for the work beside the CNN (decoding, lung masks, lesion maps), sized from the
    cores: at least 2 so decoding overlaps the CNN, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


def no_progress(label: str, total: int) -> ContextManager[Progress]:
    return contextlib.nullcontext(lambda n: None)


@dataclass(frozen=True)
class RunContext:
    """Where features are cached and how extraction runs.

    Parameters
    ----------
    features_dir : the folder of the HDF5 feature caches.
    batch_size : images per forward pass.
    offline : never try to download weights (None: ``$COVIDCT_OFFLINE``).
    weights_overrides : ``NAME=FILE|imagenet`` values: where a saved model's weights are now,
        when not where they were (checked against the model's SHA-256).
    progress : makes a progress callback for a labelled count of images.
    engine : local, or a Ray cluster (runtimes/engine.py); the same features either way.
    runtime : the library running the CNN on the CPU (runtimes/inference.py): onnxruntime (default),
        tensorflow or openvino; the same features to 1e-4.
    """

    features_dir: Path = Path("features")
    batch_size: int = 32
    offline: bool | None = None
    weights_overrides: tuple[str, ...] = ()
    progress: ProgressFactory = no_progress
    engine: EngineSettings = field(default_factory=EngineSettings)
    runtime: str = field(default_factory=lambda: default_runtime())

    def __post_init__(self) -> None:
        from .runtimes.inference import check_runtime

        check_runtime(self.runtime)
        object.__setattr__(self, "features_dir", Path(self.features_dir))
        object.__setattr__(self, "batch_size", max(1, int(self.batch_size)))
        object.__setattr__(self, "weights_overrides", tuple(self.weights_overrides))
