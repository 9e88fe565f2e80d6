"""FeatureSpec: one spelling per value, one identity, records that round-trip, options generated."""
import dataclasses

import pytest

import cli
from covidct_core.errors import ModelBundleError, SettingsError
from covidct_core.run_context import RunContext
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import SETTINGS, FeatureSpec, specs_from_options
from feature_extractor.lungs.crop import LUNG_CROP_VERSION
from feature_extractor.weights import WeightsChoice

OPTIONS = {"pooling": "multiscale", "tta": "flip", "precision": "bf16", "crop": "lungs", "window": "-500,1000"}
SHA = "ab" * 32


def test_values_are_stored_as_the_options_spell_them():
    spec = FeatureSpec.from_options("MobileNet-V2", WeightsChoice("none"), **OPTIONS).with_weights(SHA)
    record = spec.to_record()
    for name, text in OPTIONS.items():
        assert record[name] == text
    assert record["backbone"] == "mobilenetv2" and record["crop_version"] == LUNG_CROP_VERSION
    assert record["input_size"] == [224, 224] and record["weights_source"] == "none"
    assert spec.window == (-500.0, 1000.0)  # the value; its text is the one spelling above
    assert FeatureSpec.from_record(record) == spec


def test_three_windows_are_one_setting_with_one_spelling():
    spec = FeatureSpec.from_options("mobilenetv2", WeightsChoice("none"), window="-600,1500/40,400/-500,2000")
    assert spec.window == (-600.0, 1500.0, 40.0, 400.0, -500.0, 2000.0)
    record = spec.with_weights(SHA).to_record()
    assert record["window"] == "-600,1500/40,400/-500,2000"
    assert FeatureSpec.from_record(record) == spec.with_weights(SHA)
    assert spec.with_weights(SHA).identity() != FeatureSpec("mobilenetv2", "none", SHA).identity()
    for bad in ("-600,1500/40,400", "-600,1500/40,0/1,1", "lung"):
        with pytest.raises(SettingsError, match="window"):
            FeatureSpec.from_options("mobilenetv2", WeightsChoice("none"), window=bad)


def test_every_setting_changes_the_identity_and_the_file_name():
    base = FeatureSpec("mobilenetv2", "none", SHA)
    other = {"pooling": "avgmax", "tta": "flip", "precision": "mixed", "crop": "lungs", "window": (-1000.0, 200.0)}
    assert set(other) == {s.name for s in SETTINGS}  # a new setting must be added here too
    names = {base.cache_file_name()}
    for name, value in other.items():
        changed = dataclasses.replace(base, **{name: value}, crop_version=None)
        assert changed.identity() != base.identity()
        names.add(changed.cache_file_name())
    names.add(dataclasses.replace(base, weights_sha256="cd" * 32).cache_file_name())
    names.add(dataclasses.replace(base, input_size=(128, 128)).cache_file_name())
    assert len(names) == len(other) + 3


def test_the_weights_path_is_provenance_not_identity():
    a = FeatureSpec("vgg16", WeightsChoice("file", "/a/w.h5"), SHA)
    b = FeatureSpec("vgg16", WeightsChoice("file", "/b/w.h5"), SHA)
    assert a.identity() == b.identity() and a.cache_file_name() == b.cache_file_name()
    assert a.to_record()["weights_path"] == "/a/w.h5"


@pytest.mark.parametrize("options, message", [
    ({"pooling": "max"}, "unknown pooling 'max'; valid: avg, avgmax, multiscale"),
    ({"precision": "float32"}, "unknown precision 'float32'; valid: fp32, bf16, mixed"),
    ({"window": "lung"}, "LEVEL,WIDTH"),
    ({"window": "-600,0"}, "positive"),
    ({"colour": "red"}, "unknown feature settings"),
])
def test_invalid_values_are_one_clear_error(options, message):
    with pytest.raises(SettingsError, match=message):
        FeatureSpec.from_options("vgg16", **options)


def test_an_unresolved_spec_has_no_identity():
    with pytest.raises(SettingsError, match="resolved"):
        FeatureSpec("vgg16").identity()


def test_matches_takes_option_text_or_values_and_none_means_any():
    spec = FeatureSpec.from_options("vgg16", WeightsChoice("none"), **OPTIONS).with_weights(SHA)
    assert spec.matches(pooling="multiscale", window="-500,1000", crop=None)
    assert spec.matches(window=(-500, 1000), weights_source="none", weights_sha256=SHA)
    assert not spec.matches(window="-600,1500")
    assert not spec.matches(weights_source="imagenet")


def test_specs_from_options_one_per_backbone():
    specs = specs_from_options(["mobilenet", "vgg16", "mobilenet"], ["mobilenet=none"], tta="flip")
    assert [(s.backbone, s.weights.source, s.tta) for s in specs] == [("mobilenet", "none", "flip"),
                                                                     ("vgg16", "imagenet", "flip")]


def test_format_1_spellings_are_read():
    old = {"backbone": "vgg16", "weights_source": "file", "weights_sha256": SHA, "input_height": 224,
           "input_width": 224, "preprocessing": "keras.applications.vgg16.preprocess_input", "pooling": "avg",
           "augment": "flip", "precision": "mixed_float16", "crop": "lungs-v1", "window": "-600,1500",
           "provenance": '{"weights_path": "/w.h5"}'}
    spec = FeatureSpec.from_record(old, format_version=1)
    assert (spec.tta, spec.precision, spec.crop, spec.crop_version) == ("flip", "mixed", "lungs", 1)
    assert spec.weights == WeightsChoice("file", "/w.h5") and spec.input_size == (224, 224)
    plain = FeatureSpec.from_record({**old, "precision": "float32", "crop": "none"}, format_version=1)
    assert (plain.precision, plain.crop, plain.crop_version) == ("fp32", "none", 0)


def test_an_older_crop_algorithm_cannot_extract():
    spec = FeatureSpec("vgg16", "none", SHA, crop="lungs", crop_version=LUNG_CROP_VERSION - 1)
    assert not spec.is_current
    with pytest.raises(SettingsError, match=f"crops with version {LUNG_CROP_VERSION}.*--crop lungs"):
        FeatureExtractor(spec)


def test_a_spec_with_a_hash_demands_those_weights(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not these weights")
    extractor = FeatureExtractor(FeatureSpec("vgg16", WeightsChoice("file", str(weights)), SHA),
                                 RunContext(tmp_path))
    with pytest.raises(ModelBundleError, match="SHA-256 ababababab.*--weights vgg16=FILE"):
        extractor.weights


def test_every_setting_is_an_option_of_extract_and_a_filter_of_fit():
    extract = {p.name: p for p in cli.extract.params}
    fit = {p.name: p for p in cli.fit.params}
    for setting in SETTINGS:
        assert extract[setting.name].default == setting.text(setting.default)
        assert fit[setting.name].default is None
        if setting.choices:
            assert tuple(extract[setting.name].type.choices) == setting.choices
