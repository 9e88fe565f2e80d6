import os
import subprocess
import sys
from pathlib import Path

import pytest

from covidct_core.errors import CovidCTError, UnknownBackboneError, WeightsUnavailableError
from feature_extractor.backbones import BACKBONES, get_backbone
from feature_extractor.weights import (
    FILE,
    IMAGENET,
    NONE,
    WeightsChoice,
    imagenet_file,
    keras_models_dir,
    parse_weights_options,
    resolve_weights,
)

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {"vgg16", "vgg19", "resnet50", "resnet101", "densenet121", "densenet169",
            "inceptionv3", "xception", "efficientnetb0", "mobilenet", "mobilenetv2"}


def test_registry_has_required_backbones():
    assert REQUIRED <= set(BACKBONES)
    assert get_backbone("MobileNet-V2").name == "mobilenetv2"
    assert get_backbone("inception_v3").input_size == (299, 299)


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackboneError) as info:
        get_backbone("alexnet")
    assert "vgg16" in str(info.value) and "mobilenetv2" in str(info.value)


def test_imagenet_file_names_match_keras_sources():
    """The names we look up must be the ones keras caches (its source text has them)."""
    keras = pytest.importorskip("keras")
    src = Path(keras.__file__).parent / "src" / "applications"
    text = " ".join(p.read_text() for p in src.glob("*.py"))
    for spec in BACKBONES.values():
        if spec.module.startswith("mobilenet"):
            continue  # keras builds these names with a format string, checked below
        for suffix in ("_weights_tf_dim_ordering_tf_kernels_notop.h5", "_notop.h5"):
            if spec.imagenet_file.endswith(suffix):
                assert spec.imagenet_file[: -len(suffix)] in text and suffix in text, spec.name
                break
        else:
            pytest.fail(f"unexpected file name {spec.imagenet_file}")
    assert "mobilenet_%s_%d_tf_no_top.h5" in text
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_" in text


def test_parse_weights_options(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"x")
    assert parse_weights_options([], ["vgg16"]) == {"vgg16": WeightsChoice(IMAGENET)}
    assert parse_weights_options(["none"], ["vgg16", "resnet50"])["resnet50"].source == NONE
    both = parse_weights_options([f"mobilenetv2={f}"], ["vgg16", "mobilenetv2"])
    assert both["vgg16"].source == IMAGENET and both["mobilenetv2"] == WeightsChoice(FILE, str(f))
    with pytest.raises(CovidCTError, match="NAME=FILE"):
        parse_weights_options([str(f)], ["vgg16", "resnet50"])
    with pytest.raises(CovidCTError, match="not among"):
        parse_weights_options([f"xception={f}"], ["vgg16"])


def test_keras_models_dir_follows_keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert keras_models_dir() == tmp_path / "kh" / "models"
    assert imagenet_file(get_backbone("vgg16")).name == "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


def test_offline_imagenet_error_names_file_and_folder(tmp_path):
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights("resnet50", WeightsChoice(IMAGENET), offline=True)
    msg = str(info.value)
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg
    assert str(tmp_path / "keras_home" / "models") in msg


def test_imagenet_file_in_cache_is_found_and_hashed(tmp_path):
    target = imagenet_file(get_backbone("vgg16"))
    target.parent.mkdir(parents=True)
    target.write_bytes(b"weights")
    resolved = resolve_weights("vgg16", WeightsChoice(IMAGENET), offline=True)
    assert resolved.path == str(target) and resolved.sha256 and resolved.keras_argument == str(target)


def test_missing_weights_file_is_an_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        resolve_weights("vgg16", WeightsChoice(FILE, str(tmp_path / "nope.h5")))


@pytest.mark.slow
@pytest.mark.parametrize("offline", ["1", ""])
def test_cli_extract_without_weights_fails_cleanly(tmp_path, class_folders, offline):
    """Acceptance: no internet, no cached file -> one message naming file and folder."""
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "kh"), "COVIDCT_OFFLINE": offline}
    proc = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "--backbone", "vgg16",
                           "--data", str(class_folders), "--features-dir", str(tmp_path / "f")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in proc.stderr
    assert str(tmp_path / "kh" / "models") in proc.stderr


def test_preprocessing_matches_keras_for_every_backbone():
    import numpy as np

    from feature_extractor.backbones import preprocess_function
    from feature_extractor.runtimes.keras_backend import keras_module

    applications = keras_module().applications
    batch = np.random.default_rng(0).integers(0, 256, size=(2, 9, 7, 3)).astype(np.float32)
    for spec in BACKBONES.values():
        ours = preprocess_function(spec)(batch.copy())
        theirs = getattr(applications, spec.module).preprocess_input(batch.copy())
        assert np.array_equal(ours, np.asarray(theirs)), spec.name
    assert preprocess_function(BACKBONES["mobilenet"])(batch.astype(np.uint8)).dtype == np.float32
