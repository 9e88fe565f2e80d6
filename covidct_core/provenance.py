"""What made an output: library versions, file hashes and data fingerprints.

Kept free of TensorFlow imports so that recording provenance never pays its start-up.
"""
from __future__ import annotations

import hashlib
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Iterable

_TRACKED_PACKAGES = ("tensorflow", "keras", "scikit-learn", "xgboost", "numpy", "h5py",
                     "pillow", "joblib", "jax", "torch", "covidct-features")


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(items: Iterable[str]) -> str:
    """Order-independent SHA-256 of a set of strings (e.g. image keys with labels)."""
    digest = hashlib.sha256()
    for item in sorted(items):
        digest.update(item.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that can change the numbers."""
    versions = {"python": platform.python_version(),
                "keras_backend": os.environ.get("KERAS_BACKEND", "tensorflow")}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            # tensorflow may be installed as tensorflow-cpu; the package itself may run
            # from a checkout without being installed.
            alt = {"tensorflow": "tensorflow-cpu"}.get(name)
            if alt:
                try:
                    versions[name] = metadata.version(alt)
                except metadata.PackageNotFoundError:
                    pass
    return versions


def utc_now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def command_line() -> str:
    return " ".join(sys.argv)
