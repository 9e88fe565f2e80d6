"""CPU inference runtimes: the same features as TensorFlow where installed; one clear error where not."""
import sys

import numpy as np
import pytest

from covidct_core.run_context import RunContext
from covidct_core.run_settings import RuntimeMissingError, check_runtime
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import load_unlabeled
from tests.helpers import make_class_folders


def test_a_missing_runtime_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(RuntimeMissingError, match=r"--runtime onnxruntime needs onnxruntime.*pip install -e \. "
                                                  r"\(or --runtime tensorflow\)"):
        RunContext(runtime="onnxruntime")
    with pytest.raises(Exception, match="unknown runtime"):
        check_runtime("tensorrt")


@pytest.mark.slow
@pytest.mark.parametrize("runtime, module", [("onnxruntime", "onnxruntime"), ("openvino", "openvino")])
@pytest.mark.parametrize("maps", [False, True])
def test_a_runtime_gives_tensorflows_features(runtime, module, maps, tmp_path):
    pytest.importorskip(module, reason=f"{runtime} is an optional extra")
    pytest.importorskip("tf2onnx", reason=f"{runtime} needs tf2onnx (its extra)")
    records = load_unlabeled(make_class_folders(tmp_path / "data", n_per_class=3, size=64)).records
    spec = FeatureSpec("mobilenetv2", "none", input_size=(64, 64), pooling="multiscale", tta="flip", maps=maps)
    images = np.stack([FeatureExtractor(spec).load(r.path)[0] for r in records])
    reference = FeatureExtractor(spec, RunContext(tmp_path / "tf")).features_of(images) if not maps else None
    other = FeatureExtractor(spec, RunContext(tmp_path / "rt", runtime=runtime))
    if not maps:
        np.testing.assert_allclose(other.features_of(images), reference, atol=1e-4)
        assert list((tmp_path / "user_cache" / "runtime-models").glob("*.onnx"))  # exported once, cached by content
        assert not (tmp_path / "rt" / "runtime-models").exists()  # never into a features folder
    else:
        from feature_extractor.segmentation.encoder import MapExtractor

        x = other.preprocess(images)
        tf_out = MapExtractor(spec, RunContext(tmp_path / "tf", runtime="tensorflow")).maps_of_input(x, np.float32)
        rt_out = MapExtractor(spec, RunContext(tmp_path / "rt", runtime=runtime)).maps_of_input(x, np.float32)
        assert [m.shape[1] for m in rt_out] == [16, 8, 4, 2]  # strides 4 to 32 of 64 px, in order
        for rt, tf in zip(rt_out, tf_out):
            np.testing.assert_allclose(rt, tf, atol=1e-4)


def test_onnx_runtime_is_the_default_under_tensorflow_keras(monkeypatch):
    from covidct_core import run_settings as runtimes
    from covidct_core.run_settings import default_runtime

    monkeypatch.delenv("COVIDCT_RUNTIME", raising=False)
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    probe = runtimes.nvidia_gpu_visible
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert probe() is False  # no GPU is visible to this process
    monkeypatch.setattr(runtimes, "nvidia_gpu_visible", lambda: False)
    assert default_runtime() == "onnxruntime" and RunContext().runtime == "onnxruntime"
    monkeypatch.setattr(runtimes, "nvidia_gpu_visible", lambda: True)
    assert default_runtime() == "tensorflow"  # ONNX Runtime would leave the GPU idle
    monkeypatch.setattr(runtimes, "nvidia_gpu_visible", lambda: False)
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert default_runtime() == "tensorflow"  # keras itself runs the CNN under another backend
    monkeypatch.setenv("COVIDCT_RUNTIME", "openvino")
    assert default_runtime() == "openvino"


def test_a_cached_export_runs_without_building_the_keras_model(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    spec = FeatureSpec("mobilenet025", "none", input_size=(64, 64))
    first = FeatureExtractor(spec, RunContext(tmp_path / "f", runtime="onnxruntime"))
    first.model.save_weights(tmp_path / "w.weights.h5")
    spec = FeatureSpec("mobilenet025", str(tmp_path / "w.weights.h5"), input_size=(64, 64))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    exporting = FeatureExtractor(spec, RunContext(tmp_path / "f", runtime="onnxruntime"))
    expected = exporting.forward()(x)
    assert exporting._model is not None  # exported: built once
    # Another features folder: the export is the user's, made once per machine.
    cached = FeatureExtractor(spec, RunContext(tmp_path / "other-features", runtime="onnxruntime"))
    np.testing.assert_array_equal(cached.forward()(x), expected)
    assert cached._model is None  # the cached file ran alone


def test_the_runtime_cache_follows_the_environment_and_fails_in_one_line(tmp_path, monkeypatch):
    from covidct_core.errors import SettingsError
    from feature_extractor.runtimes.inference import runtime_models_dir, user_cache_dir

    assert runtime_models_dir() == tmp_path / "user_cache" / "runtime-models"  # $COVIDCT_CACHE (conftest)
    monkeypatch.delenv("COVIDCT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert user_cache_dir() == tmp_path / "xdg" / "covidct"  # the platform's cache folder
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("COVIDCT_CACHE", str(blocker))
    with pytest.raises(SettingsError, match="set COVIDCT_CACHE to a writable folder") as caught:
        runtime_models_dir()
    assert "\n" not in str(caught.value)
