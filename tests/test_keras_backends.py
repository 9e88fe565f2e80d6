"""Keras 3 backends: the same features under KERAS_BACKEND=jax and torch as under TensorFlow,
on the real shared MobileNetV2 weights, without TensorFlow being imported.

Runs where the backend is installed and skips otherwise. Here: `.venv/bin/pip install
"jax[cpu]"` (or torch) and `.venv/bin/python -m pytest tests/test_keras_backends.py`.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MOBILENETV2_FILE, SHARED_DATA, needs_shared

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]

EXTRACT = """
import json, sys
import numpy as np
from classifiers.workflows.features import feature_matrix
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.imaging.dataset import load_unlabeled
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from covidct_core.run_context import RunContext
from feature_extractor.weights import parse_choice

weights, images, features_dir, out = sys.argv[1:5]
spec = FeatureSpec("mobilenetv2", parse_choice(weights), pooling="multiscale", tta="flip")
records = sorted(load_unlabeled(images).records, key=lambda r: r.path)[:6]
report = FeatureExtractor(spec, RunContext(features_dir, offline=True)).extract(records)
np.save(out, feature_matrix(report.records, [FeatureCache(report.cache_path)]))
print(json.dumps({"device": report.device, "tensorflow_imported": "tensorflow" in sys.modules}))
"""


def extract_under(backend: str, tmp_path: Path) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"{backend}.npy"
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", EXTRACT, str(MOBILENETV2_FILE), str(SHARED_DATA / "CT_COVID"),
                           str(tmp_path / backend), str(out)], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(out), json.loads(proc.stdout.strip().splitlines()[-1])


@needs_shared(SHARED_DATA, MOBILENETV2_FILE)
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_features_match_tensorflow(backend, tmp_path):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (pip install {'jax[cpu]' if backend == 'jax' else 'torch'})")
    reference, _ = extract_under("tensorflow", tmp_path)
    features, info = extract_under(backend, tmp_path)
    assert features.shape == reference.shape == (6, 2048)
    assert np.abs(features - reference).max() < 1e-4
    assert f"keras backend {backend}" in info["device"]
    assert not info["tensorflow_imported"]  # no TensorFlow-only call outside runtimes/keras_backend.py


def test_an_unknown_or_missing_backend_is_one_line(monkeypatch):
    from covidct_core.errors import CovidCTError
    from feature_extractor.runtimes.keras_backend import backend_name

    monkeypatch.setenv("KERAS_BACKEND", "theano")
    with pytest.raises(CovidCTError, match="KERAS_BACKEND='theano' is not supported; use one of tensorflow, jax"):
        backend_name()


def test_a_backend_that_is_not_installed_is_one_clear_error(tmp_path):
    missing = next((b for b in ("torch", "jax") if importlib.util.find_spec(b) is None), None)
    if missing is None:
        pytest.skip("every backend is installed")
    from tests.helpers import make_class_folders

    data = make_class_folders(tmp_path / "d", n_per_class=1)
    proc = subprocess.run([sys.executable, "cli.py", "extract", "-b", "mobilenetv2", "--weights", "none", "--data",
                           str(data), "--features-dir", str(tmp_path / "f")], env={**os.environ, "KERAS_BACKEND": missing},
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert f"KERAS_BACKEND={missing} but {missing} is not installed" in proc.stdout + proc.stderr
