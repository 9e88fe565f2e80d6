"""The ray engine on a local Ray (ray.init(num_cpus=2)): the same features and the same tuning
as the local engine, a killed CNN worker retried, an interrupted driver resumed.

Skips where Ray Data is not installed (it is the `ray` extra; `make test` installs it).
"""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from covidct_core.errors import SettingsError
from covidct_core.run_context import RunContext
from covidct_core.run_settings import EngineError, EngineSettings
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import load_unlabeled
from feature_extractor.runtimes.engine import import_ray
from feature_extractor.weights import parse_choice
from tests.conftest import MOBILENETV2_FILE, SHARED_DATA, needs_shared
from tests.helpers import make_class_folders

REPO = Path(__file__).resolve().parents[1]
RAY = EngineSettings("ray")


def test_without_ray_the_engine_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    with pytest.raises(EngineError, match=r'--engine ray needs Ray Data.*pip install -e "\.\[ray\]"'):
        import_ray()


def test_ray_options_without_the_ray_engine_are_refused():
    with pytest.raises(SettingsError, match="need --engine ray"):
        EngineSettings("local", workers=2)
    assert EngineSettings("ray", workers=3).record() == {
        "engine": "ray", "workers": 3, "gpus_per_worker": 0.0, "ray_address": "local"}


ray = pytest.importorskip("ray", reason="Ray is the optional `ray` extra")
pytest.importorskip("ray.data", reason="Ray Data is the optional `ray` extra")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "COVIDCT_OFFLINE": "1"}})
    yield ray
    ray.shutdown()


def extract(records, features_dir, engine, weights="none", **spec):
    spec = FeatureSpec("mobilenetv2", parse_choice(weights), **spec)
    context = RunContext(features_dir, batch_size=4, offline=True, engine=engine)
    return FeatureExtractor(spec, context).extract(records)


def features_of(report):
    return FeatureCache(report.cache_path).read([r.key for r in report.records if not r.error])


@pytest.mark.slow
@pytest.mark.integration
@needs_shared(SHARED_DATA, MOBILENETV2_FILE)
def test_ray_and_local_engines_give_the_same_features_on_real_images(local_ray, tmp_path):
    records = sorted(load_unlabeled(SHARED_DATA / "CT_COVID").records, key=lambda r: r.path)[:10]
    records += sorted(load_unlabeled(SHARED_DATA / "CT_NonCOVID").records, key=lambda r: r.path)[:10]
    settings = dict(weights=str(MOBILENETV2_FILE), pooling="multiscale", tta="flip")
    local = extract(records, tmp_path / "local", EngineSettings(), **settings)
    on_ray = extract(records, tmp_path / "ray", RAY, **settings)
    assert on_ray.n_new == local.n_new == 20 and on_ray.device.startswith("ray: 1 CNN worker")
    assert Path(on_ray.cache_path).name == Path(local.cache_path).name  # the same identity, the same keys
    np.testing.assert_allclose(features_of(on_ray), features_of(local), atol=1e-5)
    again = extract(records, tmp_path / "ray", RAY, **settings)
    assert (again.n_cached, again.n_new, again.device) == (20, 0, None)  # all cached: no Ray job


def test_actor_cpus_leave_room_for_decoding_and_refuse_what_the_cluster_cannot_hold():
    from feature_extractor.runtimes.ray_extract import DECODE_CPUS, actor_cpus

    assert actor_cpus(1, 2) == 1.0
    assert actor_cpus(2, 2) * 2 + DECODE_CPUS <= 2  # as many actors as cores: decoding still fits
    with pytest.raises(EngineError, match="--workers 3: this Ray cluster has 2 CPUs; it holds at most 2"):
        actor_cpus(3, 2)
    with pytest.raises(EngineError, match="needs 2 GPUs; this Ray cluster has 1"):
        actor_cpus(2, 8, gpus_per_worker=1.0, cluster_gpus=1.0)


@pytest.mark.slow
def test_as_many_cnn_workers_as_cores_finish(local_ray, tmp_path):
    """--workers N with N = the cluster's CPUs (2): every image extracted, as locally (it used to wait
    forever: the actors held every CPU and no decoding task could run)."""
    data = make_class_folders(tmp_path / "data", n_per_class=12, size=48)
    records = load_unlabeled(data).records
    reference = extract(records, tmp_path / "local", EngineSettings())
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(
        report=extract(records, tmp_path / "ray", EngineSettings("ray", workers=2))), daemon=True)
    worker.start()
    worker.join(timeout=240)
    assert not worker.is_alive(), "extraction with --workers 2 on 2 CPUs made no progress"
    report = outcome["report"]
    assert report.n_new == 24 and report.device.startswith("ray: 2 CNN workers")
    np.testing.assert_allclose(features_of(report), features_of(reference), atol=1e-5)
    with pytest.raises(EngineError, match="holds at most 2 CNN workers"):
        extract(records, tmp_path / "ray3", EngineSettings("ray", workers=3))


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"BackboneOnBatches" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.mark.slow
def test_a_killed_cnn_worker_is_restarted_and_every_image_is_extracted_once(local_ray, tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=20, size=48)
    records = load_unlabeled(data).records
    reference = extract(records, tmp_path / "local", EngineSettings())
    features_dir = tmp_path / "ray"
    killed = []

    def kill_the_worker_mid_run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            segments = list(features_dir.glob("*.segments/*.h5"))
            pids = _actor_pids()
            if len(segments) >= 2 and pids:  # it has finished batches and has more to do
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_worker_mid_run)
    killer.start()
    report = extract(records, features_dir, RAY)
    killer.join()
    assert killed, "the run finished before the worker could be killed"
    cache = FeatureCache(report.cache_path)
    assert report.n_new == len(records) == 40 and not report.failed
    assert len(cache) == 40 and sum(cache.segments().values()) == 40  # each image once, no copies
    np.testing.assert_allclose(features_of(report), features_of(reference), atol=1e-5)


@pytest.mark.slow
def test_an_interrupted_driver_resumes_with_only_the_rest(tmp_path):
    data = make_class_folders(tmp_path / "data", n_per_class=30, size=48)
    features_dir = tmp_path / "features"
    command = [sys.executable, str(REPO / "cli.py"), "extract", "-b", "mobilenetv2", "--weights", "none",
               "--data", str(data), "--features-dir", str(features_dir), "--batch-size", "2",
               "--engine", "ray", "--offline"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if len(list(features_dir.glob("*.segments/*.h5"))) >= 3:
            break
        time.sleep(0.01)
    assert driver.poll() is None, "extract finished before it could be interrupted"
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130 and "Interrupted." in err
    done = len(FeatureCache(next(features_dir.glob("*.h5"))))
    assert 6 <= done < 60

    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done} cached, {60 - done} new" in rerun.stdout and "ray: 1 CNN worker" in rerun.stdout
    assert len(FeatureCache(next(features_dir.glob("*.h5")))) == 60


@pytest.mark.slow
def test_tuning_on_ray_chooses_what_local_tuning_chooses(local_ray):
    from classifiers.estimators.registry import get_classifier
    from feature_extractor.runtimes.engine import joblib_engine

    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 16))
    y = (X[:, 0] + rng.normal(scale=1.5, size=120) > 0).astype(int)
    groups = np.arange(120) // 2
    search = get_classifier("svm").search(cv=4, random_state=0)
    local = search.fit(X, y, groups)
    local_params, local_aucs, local_oof = local.best_params_, [c["cv_auc"] for c in local.candidates_], local.oof_
    with joblib_engine(RAY):
        on_ray = get_classifier("svm").search(cv=4, random_state=0).fit(X, y, groups)
    assert on_ray.best_params_ == local_params
    assert [c["cv_auc"] for c in on_ray.candidates_] == pytest.approx(local_aucs)
    np.testing.assert_allclose(on_ray.oof_, local_oof, atol=1e-9)
