"""kill -9 during extract, and two extracts at once, on real CLI subprocesses."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from feature_extractor.cache.feature_cache import FeatureCache, list_caches
from tests.helpers import make_class_folders

pytestmark = pytest.mark.slow  # real subprocesses, each importing TensorFlow
REPO = Path(__file__).resolve().parents[1]
N_IMAGES = 40


def extract_cmd(data, features):
    return [sys.executable, str(REPO / "cli.py"), "extract", "-b", "mobilenetv2", "--weights", "none",
            "--data", str(data), "--features-dir", str(features), "--batch-size", "2"]


def features_by_key(features_dir) -> dict[str, np.ndarray]:
    (cache,) = list_caches(features_dir)
    keys = cache.keys()
    return dict(zip(keys, cache.read(keys)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("crash") / "data", n_per_class=N_IMAGES // 2)


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """Features of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "KERAS_HOME": str(out / "kh"), "COVIDCT_OFFLINE": "1"}
    subprocess.run(extract_cmd(dataset, out), check=True, capture_output=True, env=env, timeout=600)
    feats = features_by_key(out)
    assert len(feats) == N_IMAGES
    return feats


@pytest.mark.parametrize("after_batches", [1, 6])
def test_kill_9_then_resume_matches_uninterrupted_run(dataset, reference, tmp_path, after_batches):
    features = tmp_path / "features"
    proc = subprocess.Popen(extract_cmd(dataset, features), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        written = list(features.glob("*.segments/*.h5"))
        if len(written) >= after_batches:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "extract finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    # The cache is readable right after the kill and holds the finished batches.
    (cache,) = list_caches(features)
    done = len(cache)
    assert 2 * after_batches <= done < N_IMAGES

    rerun = subprocess.run(extract_cmd(dataset, features), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} cached, {N_IMAGES - done} new" in rerun.stdout
    reopened = FeatureCache(cache.path)  # the killed run's and the rerun's batches merged into one segment
    assert not reopened.needs_compaction() and len(list(reopened.segments_dir.glob("*.h5"))) == 1
    resumed = features_by_key(features)
    assert resumed.keys() == reference.keys()
    for key, value in reference.items():
        np.testing.assert_allclose(resumed[key], value, atol=1e-6, rtol=1e-5)


def test_two_extracts_at_once_do_not_corrupt_the_cache(dataset, reference, tmp_path):
    features = tmp_path / "features"
    procs = [subprocess.Popen(extract_cmd(dataset, features), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    new_counts = sorted(int(out.split(" new")[0].rsplit(" ", 1)[-1]) for out, _ in outputs)
    assert sum(new_counts) == N_IMAGES  # each image extracted by exactly one of them
    (cache,) = list_caches(features)
    assert len(cache) == N_IMAGES and not cache.needs_compaction()
    together = features_by_key(features)
    for key, value in reference.items():
        np.testing.assert_allclose(together[key], value, atol=1e-6, rtol=1e-5)
