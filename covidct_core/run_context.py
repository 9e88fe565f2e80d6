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

from .run_settings import RUNTIMES, EngineSettings, check_runtime, default_runtime
from .settings_schema import Settings, setting

Progress = Callable[[int], None]  # called with the number of images just finished
ProgressFactory = Callable[[str, int], ContextManager[Progress]]  # (label, total) -> a Progress


def worker_threads() -> int:
    """Threads for the work beside the CNN (decoding, segmentation, maps), sized from the cores: at
    least 2 so decoding overlaps the CNN, at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


def no_progress(label: str, total: int) -> ContextManager[Progress]:
    return contextlib.nullcontext(lambda n: None)


@dataclass(frozen=True)
class RunContext(Settings):
    """Where features are cached and how extraction runs (the declared fields are command options).

    Parameters
    ----------
    features_dir : the folder of the HDF5 feature caches.
    batch_size : images per forward pass.
    offline : never try to download weights (None: ``$COVIDCT_OFFLINE``).
    weights_overrides : ``NAME=FILE|imagenet`` values: where a saved model's weights are now,
        when not where they were (checked against the model's SHA-256).
    progress : makes a progress callback for a labelled count of images.
    engine : local, or a Ray cluster (run_settings.py); the same features either way.
    runtime : the library running the CNN on the CPU (feature_extractor/runtimes/inference.py):
        onnxruntime (default), tensorflow or openvino; the same features to 1e-4.
    """

    features_dir: Path = Path("features")
    batch_size: int = setting(32, "Images per forward pass.", kind=int, low=1, high=4096)
    offline: bool | None = setting(None, "Never download weights (also: COVIDCT_OFFLINE=1).", kind=bool,
                                   optional=True)
    weights_overrides: tuple[str, ...] = ()
    progress: ProgressFactory = no_progress
    engine: EngineSettings = field(default_factory=EngineSettings)
    runtime: str | None = setting(
        None, "What runs the CNN: onnxruntime (on the CPU, about 2x TensorFlow's speed there), tensorflow (keras "
              "itself, also on a GPU) or openvino (pip install -e \".[openvino]\"); the same features to 1e-4; the "
              "model is exported to ONNX once and cached in the user's cache folder.  [default: onnxruntime; "
              "tensorflow where an NVIDIA GPU is visible; or $COVIDCT_RUNTIME]", choices=RUNTIMES, optional=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "runtime", self.runtime or default_runtime())
        check_runtime(self.runtime)
        object.__setattr__(self, "features_dir", Path(self.features_dir))
        object.__setattr__(self, "weights_overrides", tuple(self.weights_overrides))
