import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import make_class_folders, make_covidct_layout

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVIDCT_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data" / "covid-ct"
SHARED_MOSMED = SHARED / "data" / "mosmed-slices"
SHARED_MODELS = SHARED / "keras" / "models"
MOBILENETV2_FILE = SHARED_MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5"
MOBILENET025_KERAS_FILE = SHARED_MODELS / "mobilenet_2_5_224_tf_no_top.h5"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No test downloads weights or reads the user's keras cache or data."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("COVIDCT_OFFLINE", "1")
    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "user_cache"))  # never the user's own cache
    # Keras itself runs the CNNs of the tests: exporting every small test model to ONNX would cost
    # seconds each; tests/test_runtimes.py checks the runtimes against it.
    monkeypatch.setenv("COVIDCT_RUNTIME", "tensorflow")
    monkeypatch.delenv("COVIDCT_DATA", raising=False)


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return make_class_folders(tmp_path / "data")


@pytest.fixture
def covidct_layout(tmp_path) -> Path:
    return make_covidct_layout(tmp_path / "covid-ct")


def needs_shared(*paths: Path):
    missing = [p for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data/weights absent: {missing}")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    """A small COVID-CT replica with mobilenetv2 (weights=none) features extracted once."""
    import cli

    root = tmp_path_factory.mktemp("ws")
    data = make_covidct_layout(root / "covid-ct", n_patients=12, per_patient=2)
    result = CliRunner().invoke(cli.main, ["extract", "-b", "mobilenetv2", "--weights", "none",
                                           "--data", str(data), "--features-dir", str(root / "features"),
                                           "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    return root, data, result.output


@pytest.fixture(scope="session")
def logreg_model(workspace) -> tuple[Path, Path]:
    """A logistic regression fitted on the workspace's features: (workspace root, model path)."""
    import cli

    root, data, _ = workspace
    path = root / "models" / "logreg.joblib"
    result = CliRunner().invoke(cli.main, ["fit", "--clf", "logreg", "--data", str(data), "--features-dir",
                                           str(root / "features"), "--model", str(path), "--cv-folds", "3"])
    assert result.exit_code == 0, result.output
    return root, path
