import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import make_class_folders, make_covidct_layout, make_lesion_data

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COVIDCT_SHARED", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data" / "covid-ct"
SHARED_MOSMED = SHARED / "data" / "mosmed-slices"
SHARED_MODELS = SHARED / "keras" / "models"
MOBILENETV2_FILE = SHARED_MODELS / "mobilenet_v2_1.0_224_imagenet_from_coral_tf2_ptq_no_top.h5"
MOBILENET025_KERAS_FILE = SHARED_MODELS / "mobilenet_2_5_224_tf_no_top.h5"
# A small, quick segmentation network: 64 px, narrow decoders, a few epochs (the bench proves the quality).
QUICK = ("--lesion-side", 64, "--lesion-width", 8, "--lesion-epochs", 40, "--lesion-members", 2)


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


@pytest.fixture(scope="session")
def lesion_model(workspace, tmp_path_factory):
    """A logistic regression with a quick segmentation network on synthetic lesion slices: (workspace root,
    its data, the lesion data, the model path)."""
    import cli

    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path_factory.mktemp("lesions") / "lesion-set")
    model = root / "models" / "lesion.joblib"
    result = CliRunner().invoke(cli.main, [str(a) for a in (
        "fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
        "--cv-folds", "3", "--lesion-data", lesions, *QUICK)])
    assert result.exit_code == 0, result.output
    return root, data, lesions, model


@pytest.fixture(scope="session")
def trained_network(tmp_path_factory):
    """A network trained for a few epochs on synthetic slices (random-init backbone at 64 px): the decoders
    learn the lungs and the opacities from the slice and the maps."""
    from classifiers.settings import LesionSettings
    from classifiers.workflows.lesions.training import train_segmentation
    from covidct_core.run_context import RunContext
    from feature_extractor.feature_spec import FeatureSpec
    from feature_extractor.segmentation.lesion_data import load_lesion_folder

    root = tmp_path_factory.mktemp("network")
    data = load_lesion_folder(make_lesion_data(root / "les", patients=3, per_patient=6))
    settings = LesionSettings(side=64, width=16, epochs=120, members=2, seed=0)
    context = RunContext(root / "features", batch_size=32)
    return train_segmentation(data, FeatureSpec("mobilenetv2", "none"), settings, context), settings, context
