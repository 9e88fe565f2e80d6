"""TensorFlow start-up in one place: a quiet import, GPU memory growth, and the device name.

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


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
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


@lru_cache(maxsize=None)
def device_name() -> str:
    """Import TensorFlow, let it grow GPU memory as needed, and say what inference runs on."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _native_stderr_silenced():
        import tensorflow as tf

        if not os.environ.get("COVIDCT_TF_VERBOSE"):  # e.g. retracing hints: not the user's business
            tf.get_logger().setLevel("ERROR")
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except RuntimeError:  # already initialised by someone else
                pass
    if gpus:
        names = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        return f"GPU: {', '.join(names)}"
    return f"CPU ({os.cpu_count()} cores)"


def keras_module():
    """keras, imported after TensorFlow's quiet start-up: every keras import goes through here."""
    device_name()
    import keras

    return keras
