"""The Keras runtime in one place: which backend (KERAS_BACKEND: tensorflow, the default,
jax or torch), its quiet start-up, GPU memory growth, and the device name. Nothing outside
this module calls a backend library directly; everything else goes through keras.

TensorFlow 2.18+ writes start-up notes to the native stderr before its log settings apply
(oneDNN, CUDA probing), which buries our own messages. They are silenced during import and
device discovery only; set COVIDCT_TF_VERBOSE=1 to see them.
"""
from __future__ import annotations

import contextlib
import os
import sys
from functools import lru_cache
from typing import Iterator

from covidct_core.errors import CovidCTError

BACKENDS = ("tensorflow", "jax", "torch")


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    if os.environ.get("COVIDCT_TF_VERBOSE"):
        yield
        return
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # e.g. captured stderr under pytest
        fd = 2
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def backend_name() -> str:
    """The Keras backend this process uses (KERAS_BACKEND, default tensorflow)."""
    name = os.environ.get("KERAS_BACKEND", "tensorflow")
    if name not in BACKENDS:
        raise CovidCTError(f"KERAS_BACKEND={name!r} is not supported; use one of {', '.join(BACKENDS)}")
    return name


def _tensorflow_devices() -> list[str]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if not os.environ.get("COVIDCT_TF_VERBOSE"):  # e.g. retracing hints: not the user's business
        tf.get_logger().setLevel("ERROR")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised by someone else
            pass
    return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]


def _jax_devices() -> list[str]:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # grow GPU memory as needed
    import jax

    return [d.device_kind for d in jax.devices() if d.platform != "cpu"]


def _torch_devices() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


@lru_cache(maxsize=None)
def device_name() -> str:
    """Start the backend quietly and say what inference runs on."""
    backend = backend_name()
    find = {"tensorflow": _tensorflow_devices, "jax": _jax_devices, "torch": _torch_devices}[backend]
    try:
        with native_stderr_silenced():
            gpus = find()
    except ImportError:
        raise CovidCTError(f"KERAS_BACKEND={backend} but {backend} is not installed; install it "
                           "(see the README, Keras backends) or unset KERAS_BACKEND") from None
    where = f"GPU: {', '.join(gpus)}" if gpus else f"CPU ({os.cpu_count()} cores)"
    return where if backend == "tensorflow" else f"{where}, keras backend {backend}"


def keras_module():
    """keras, imported after the backend's quiet start-up: every keras import goes through here."""
    device_name()
    import keras

    return keras
