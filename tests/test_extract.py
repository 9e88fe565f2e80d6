
import numpy as np
import pytest

from covidct_core.run_context import RunContext
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import load_dataset, load_unlabeled

SMALL = (64, 64)  # random-init tests need no full-size input


def extractor(features_dir, weights="none", **settings):
    spec = FeatureSpec("mobilenetv2", weights, input_size=settings.pop("input_size", SMALL), **settings)
    return FeatureExtractor(spec, RunContext(features_dir, batch_size=8))


def test_extract_then_reuse_cache(tmp_path, class_folders):
    records = load_dataset(class_folders).records
    first = extractor(tmp_path / "f").extract(records)
    assert (first.n_new, first.n_cached, first.n_failed) == (16, 0, 0)
    assert first.device.startswith(("CPU", "GPU"))
    again = extractor(tmp_path / "f")
    second = again.extract(records)
    assert (second.n_new, second.n_cached) == (0, 16)
    assert second.device is None and second.cache_path == first.cache_path
    feats = FeatureCache(first.cache_path).read([r.key for r in second.records])
    assert feats.shape == (16, 1280) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std(axis=0).max() > 0


def test_random_init_is_reproducible(tmp_path, class_folders):
    """weights=none is seeded, so a second model writes to (and matches) the same cache."""
    records = load_dataset(class_folders).records[:4]
    a = extractor(tmp_path / "a").extract(records)
    b = extractor(tmp_path / "b").extract(records)
    assert a.spec.weights_sha256 == b.spec.weights_sha256
    keys = [r.key for r in a.records]
    np.testing.assert_allclose(FeatureCache(a.cache_path).read(keys),
                               FeatureCache(b.cache_path).read(keys), atol=1e-6)


def test_new_images_are_appended_and_bad_ones_reported(tmp_path, class_folders):
    ex = extractor(tmp_path / "f")
    records = load_dataset(class_folders).records
    ex.extract(records[:5])
    (class_folders / "COVID" / "broken.png").write_bytes(b"not an image")
    (class_folders / "COVID" / "empty.png").write_bytes(b"")
    report = ex.extract(load_unlabeled(class_folders).records)
    assert (report.n_cached, report.n_new, report.n_failed) == (5, 11, 2)
    assert "not a recognised image format" in report.failed[str(class_folders / "COVID" / "broken.png")]
    assert "empty file" in report.failed[str(class_folders / "COVID" / "empty.png")]


def test_renamed_file_is_not_reextracted(tmp_path, class_folders):
    records = load_dataset(class_folders).records
    extractor(tmp_path / "f").extract(records)
    src = class_folders / "COVID" / "img0.png"
    src.rename(class_folders / "COVID" / "renamed.png")
    report = extractor(tmp_path / "f").extract(load_unlabeled(class_folders).records)
    assert report.n_new == 0 and report.n_cached == 16


def test_cached_extract_with_file_weights_builds_no_model(tmp_path, class_folders, monkeypatch):
    """With a weights file and everything cached, no CNN is built. The file given relative to
    the working folder is recorded absolute, so a model finds it again from anywhere."""
    records = load_dataset(class_folders).records[:3]
    ex = extractor(tmp_path / "f")
    ex.extract(records)
    ex.model.save_weights(tmp_path / "w.weights.h5")
    monkeypatch.chdir(tmp_path)
    extractor(tmp_path / "g", "w.weights.h5").extract(records)
    second = extractor(tmp_path / "g", "w.weights.h5")
    report = second.extract(records)
    assert report.n_cached == 3 and second._model is None and report.device is None
    assert report.spec.weights.path == str(tmp_path / "w.weights.h5")
    assert FeatureCache(report.cache_path).spec.weights.path == str(tmp_path / "w.weights.h5")


@pytest.mark.parametrize("pooling, dim", [("avgmax", 2560), ("multiscale", None)])
def test_pooling_variants_have_their_own_cache(tmp_path, class_folders, pooling, dim):
    records = load_dataset(class_folders).records[:3]
    base = extractor(tmp_path / "f").extract(records)
    ex = extractor(tmp_path / "f", input_size=(96, 96), pooling=pooling)
    report = ex.extract(records)
    assert report.cache_path != base.cache_path and report.n_new == 3
    feats = FeatureCache(report.cache_path).read([r.key for r in report.records])
    if dim:
        assert feats.shape == (3, dim)
    else:  # three resolutions of MobileNetV2 (its 1280-wide head is the last)
        assert feats.shape[1] > 1280 and ex.feature_dim == feats.shape[1]


def test_flip_tta_is_mirror_invariant(tmp_path):
    from PIL import ImageOps

    from tests.helpers import ct_like
    img = ct_like(3, True, 64)
    img.save(tmp_path / "a.png")
    ImageOps.mirror(img).save(tmp_path / "b.png")
    report = extractor(tmp_path / "f", tta="flip").extract(load_unlabeled(tmp_path).records)
    a, b = FeatureCache(report.cache_path).read([r.key for r in report.records])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_features_are_cached_apart_and_close_to_fp32(tmp_path, class_folders):
    records = load_dataset(class_folders).records[:4]
    fp32 = extractor(tmp_path / "f").extract(records)
    bf16 = extractor(tmp_path / "f", precision="bf16").extract(records)
    assert bf16.cache_path != fp32.cache_path and bf16.spec.weights_sha256 == fp32.spec.weights_sha256
    keys = [r.key for r in fp32.records]
    a, b = FeatureCache(fp32.cache_path).read(keys), FeatureCache(bf16.cache_path).read(keys)
    assert b.dtype == np.float32 and FeatureCache(bf16.cache_path).attrs["precision"] == "bf16"
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98  # bfloat16 keeps ~3 significant digits


def test_features_of_arrays_match_the_cache_and_need_no_prior_call(tmp_path, class_folders):
    """features_of (used by the explanations) is the cached pipeline without the cache, and
    works on a fresh extractor (weights resolved on demand)."""
    records = load_dataset(class_folders).records[:3]
    report = extractor(tmp_path / "f").extract(records)
    fresh = extractor(tmp_path / "f")
    images = np.stack([fresh.prepare(r.path).model_input(SMALL) for r in records])
    cached = FeatureCache(report.cache_path).read([r.key for r in report.records])
    scale = np.abs(cached).max()
    assert scale > 0 and np.allclose(fresh.features_of(images), cached, rtol=1e-4, atol=1e-4 * scale)
    other = np.roll(cached, 1, axis=0)  # the check can fail: rows of other images differ
    assert not np.allclose(other, cached, rtol=1e-4, atol=1e-4 * scale)


def test_extract_takes_an_unlabeled_folder_and_predict_reads_its_cache(tmp_path, class_folders, logreg_model):
    """Labels are needed only where a command uses them: extract fills the cache from any folder of
    images, beside a labeled source, and predict then runs no CNN."""
    from click.testing import CliRunner

    import cli
    from tests.helpers import ct_like

    root, model = logreg_model
    site = tmp_path / "site-scans"
    (site / "day-1").mkdir(parents=True)
    for i in range(3):
        ct_like(700 + i, i % 2 == 0).save(site / "day-1" / f"s{i}.png")
    features = root / "features"
    result = CliRunner().invoke(cli.main, ["extract", "-b", "mobilenetv2", "--weights", "none", "--data", str(site),
                                           "--data", str(class_folders), "--features-dir", str(features)])
    assert result.exit_code == 0, result.output
    assert "unlabeled" in result.output and "site-scans: 3" in result.output and "19 images" in result.output, \
        result.output
    again = CliRunner().invoke(cli.main, ["predict", str(site), "--model", str(model), "--features-dir", str(features),
                                          "--out", str(tmp_path / "p.csv")])
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4
