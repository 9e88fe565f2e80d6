"""Which library runs a frozen CNN's forward pass on the CPU: ONNX Runtime (the default),
TensorFlow (keras itself) or OpenVINO.

The keras model (pooled or dense) is exported to ONNX once (keras' own exporter, tf2onnx) and
the file is cached by content: its name is a hash of the spec's identity (backbone, weights
SHA-256, input size, pooling, precision, grid) and the exporter's versions, in the user's cache
(``$COVIDCT_CACHE/runtime-models/``, else the platform's cache folder, e.g.
``~/.cache/covidct/runtime-models``): exported once per machine, whatever the features folder.
ONNX Runtime runs that file; OpenVINO compiles it. Features
match TensorFlow's to 1e-4 (tests/test_runtimes.py, where the runtime is installed); the feature
cache does not depend on the runtime, as it does not on the Keras backend. Measured on 2 cores
(BENCHMARKS "CPU runtimes"): ONNX Runtime 1.9-2.2x TensorFlow's speed for the pooled and the
dense MobileNets (largest difference 4e-5), OpenVINO 1.5-1.8x (in f32; in its default bf16 on
this CPU it was faster but off by up to 1.5): so ONNX Runtime is the default
(``$COVIDCT_RUNTIME`` sets another; with a Keras backend other than TensorFlow, or where an
NVIDIA GPU is visible, the default is keras itself, ``tensorflow``, which runs on the GPU). A
cached export runs without building the keras model or importing TensorFlow. ONNX Runtime is
installed with the package; OpenVINO is the ``openvino`` extra. A runtime whose library is
missing is one clear error (the runtime names and that check: covidct_core/run_settings.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from covidct_core.errors import SettingsError
from covidct_core.run_settings import ONNXRUNTIME, TENSORFLOW, check_runtime


def runtime_device(name: str) -> str:
    """What a runtime's forward passes run on, for the extract summary (TensorFlow: the device it
    found; the others run on the CPU, and naming it starts no TensorFlow)."""
    if name == TENSORFLOW:
        from .keras_backend import device_name

        return device_name()
    return f"CPU ({os.cpu_count()} cores), {name}"


_MODELS_DIR = "runtime-models"
_EXPORT_LOCK = threading.Lock()
CACHE_ENV = "COVIDCT_CACHE"


def user_cache_dir() -> Path:
    """The tool's per-user cache: ``$COVIDCT_CACHE``, else the platform's cache folder (platformdirs:
    ``~/.cache/covidct`` on Linux, ``~/Library/Caches/covidct`` on macOS, ``%LOCALAPPDATA%`` on Windows)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("covidct", appauthor=False))


def runtime_models_dir() -> Path:
    """Where exported runtime model files live (created when missing); one clear error when it
    cannot be written."""
    folder = user_cache_dir() / _MODELS_DIR
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as exc:
        raise SettingsError(f"cannot use {folder} for the runtime's model files ({exc.strerror or exc}): set "
                            f"{CACHE_ENV} to a writable folder, or use --runtime tensorflow") from None
    return folder


def exported_onnx(build_model: Callable[[], Any], identity: dict) -> Path:
    """The keras model that ``build_model`` returns as an ONNX file, exported once per identity
    into the user's cache (by content); ``build_model`` is only called when the file is not there
    yet: a cached export needs no keras model."""
    from importlib.metadata import version

    # The exporters' versions from their package metadata: importing them would start TensorFlow.
    digest = hashlib.sha256(json.dumps({"model": identity, "keras": version("keras"),
                                        "tf2onnx": version("tf2onnx")}, sort_keys=True).encode()).hexdigest()
    path = runtime_models_dir() / f"{identity.get('backbone', 'model')}-{digest[:16]}.onnx"
    with _EXPORT_LOCK:
        if not path.exists():
            model = build_model()
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            shape = (1, *model.input_shape[1:])
            model(np.zeros(shape, np.float32))  # keras exports models that have been called
            with quiet_export():
                model.export(str(tmp), format="onnx", verbose=False)
            os.replace(tmp, path)
    return path


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """tf2onnx's graph optimiser writes session notes to the native stderr, and its module a
    NumPy deprecation warning: neither is the user's business."""
    import warnings

    from .keras_backend import native_stderr_silenced

    with warnings.catch_warnings(), native_stderr_silenced():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def forward(name: str, build_model: Callable[[], Any], identity: dict) -> Callable[[np.ndarray], Any]:
    """The forward pass (preprocessed float32 batch in, outputs out: an array, or a list of arrays for a
    model with several outputs) on ``name`` of the keras model that ``build_model`` returns, called only
    when it is needed."""
    check_runtime(name)
    if name == TENSORFLOW:
        model = build_model()
        return lambda x: _outputs(model.predict_on_batch(x))
    path = exported_onnx(build_model, identity)
    threads = os.cpu_count() or 1
    if name == ONNXRUNTIME:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        return lambda x: _outputs(session.run(None, {input_name: np.ascontiguousarray(x, np.float32)}))
    import openvino as ov

    # f32: on CPUs with bfloat16 (AVX512-BF16, AMX) OpenVINO would otherwise compute in bf16.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: _outputs([compiled(np.ascontiguousarray(x, np.float32))[o] for o in compiled.outputs])


def _outputs(values: Any) -> Any:
    """One output as an array, several as a list of arrays (in the model's order)."""
    if isinstance(values, (list, tuple)):
        arrays = [np.asarray(v) for v in values]
        return arrays[0] if len(arrays) == 1 else arrays
    return np.asarray(values)
