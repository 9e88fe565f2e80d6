"""How a command runs, as declared settings: which library runs the CNN (``RUNTIMES``) and where the
work runs (:class:`EngineSettings`: this process, or a Ray cluster).

Nothing here changes a number: every runtime gives the same features to 1e-4 and the ray engine
the same features and fits as the local one. The libraries themselves are only looked for here,
never imported: feature_extractor/runtimes/ runs them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import SettingsError
from .settings_schema import Settings, setting

RUNTIMES = ("tensorflow", "onnxruntime", "openvino")
TENSORFLOW, ONNXRUNTIME, OPENVINO = RUNTIMES
ENGINES = ("local", "ray")
LOCAL, RAY = ENGINES


class RuntimeMissingError(SettingsError):
    """A runtime asked for whose library is not installed."""


class EngineError(SettingsError):
    """The engine asked for cannot run here (Ray missing, cluster unreachable)."""


def nvidia_gpu_visible() -> bool:
    """Whether the NVIDIA driver lists a GPU that CUDA_VISIBLE_DEVICES does not hide (asked of the
    driver's files, not of TensorFlow, which takes seconds to start)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    try:
        return gpus.is_dir() and any(gpus.iterdir())
    except OSError:
        return False


def default_runtime() -> str:
    """``$COVIDCT_RUNTIME``; else keras itself (``tensorflow``) under a non-TensorFlow Keras backend
    or where an NVIDIA GPU is visible (ONNX Runtime runs on the CPU here); else ONNX Runtime."""
    chosen = os.environ.get("COVIDCT_RUNTIME")
    if chosen:
        return chosen
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" or nvidia_gpu_visible():
        return TENSORFLOW
    return ONNXRUNTIME


def check_runtime(name: str) -> None:
    """One clear error for an unknown runtime or one whose library is missing."""
    if name not in RUNTIMES:
        raise SettingsError(f"unknown runtime {name!r}; valid: {', '.join(RUNTIMES)}")
    needs = {ONNXRUNTIME: ("onnxruntime", "tf2onnx"), OPENVINO: ("openvino", "tf2onnx")}.get(name, ())
    install = {ONNXRUNTIME: "pip install -e .", OPENVINO: 'pip install -e ".[openvino]"'}.get(name)
    import importlib.util

    for module in needs:  # found, not imported: tf2onnx imports TensorFlow, which a fit on cached features never needs
        try:
            missing = importlib.util.find_spec(module) is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise RuntimeMissingError(f"--runtime {name} needs {module}, which is not installed here: {install} "
                                      "(or --runtime tensorflow)") from None


@dataclass(frozen=True)
class EngineSettings(Settings):
    """How work is spread: this process (``local``; decoding in threads) or a Ray cluster (``ray``)."""

    engine: str = setting(LOCAL, "ray: run on a Ray cluster (pip install -e \".[ray]\"); the same results as "
                                 "local. Images and weights must be readable at the same paths on every node.",
                          choices=ENGINES)
    workers: int | None = setting(None, "With --engine ray: CNN actors (extraction) or parallel fits (tuning).  "
                                        "[default: one per GPU share with --gpus-per-worker, else 1 actor; all CPUs "
                                        "for fits]", kind=int, low=1, optional=True)
    gpus_per_worker: float = setting(0.0, "With --engine ray: GPUs each CNN actor reserves (fractions share one GPU).",
                                     kind=float, low=0)
    ray_address: str | None = setting(None, "With --engine ray: an existing cluster (auto, ray://head:10001).  "
                                            "[default: start a local Ray for this command]", optional=True,
                                      metavar="ADDRESS")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.engine == LOCAL and (self.workers or self.gpus_per_worker or self.ray_address):
            raise SettingsError("--workers, --gpus-per-worker and --ray-address need --engine ray")

    @property
    def is_ray(self) -> bool:
        return self.engine == RAY

    def record(self, workers: int | None = None) -> dict:
        """For provenance: which engine, how many workers."""
        out = {"engine": self.engine}
        if self.is_ray:
            out.update(workers=workers or self.workers, gpus_per_worker=self.gpus_per_worker,
                       ray_address=self.ray_address or "local")
        return out
