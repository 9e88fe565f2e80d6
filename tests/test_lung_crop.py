"""--crop lungs: the segmentation, its fallback, and its place in the cache and the model."""
import json
import random

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

import cli
from feature_extractor.imaging.decode import prepare_image
from feature_extractor.lungs.crop import LUNG_CROP_VERSION, crop_lungs
from tests.conftest import SHARED_DATA, needs_shared
from tests.helpers import ct_like


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def annotated_slice(size: int = 192) -> np.ndarray:
    """A CT-like slice with what papers add: a letter box in a corner and an arrow."""
    img = ct_like(3, True, size).convert("RGB")
    draw = ImageDraw.Draw(img)
    draw.rectangle([4, 4, 30, 22], fill=(255, 255, 255))           # panel letter
    draw.line([(size - 6, size - 6), (size - 30, size - 30)], fill=(255, 255, 0), width=3)  # arrow
    return np.asarray(img)


def test_crop_keeps_lungs_and_drops_annotations():
    rgb = annotated_slice()
    crop = crop_lungs(rgb)
    assert crop.found and crop.reason is None
    top, left, bottom, right = crop.bbox
    size = rgb.shape[0]
    # both synthetic lungs (x in 0.20..0.80, y in 0.20..0.80 of the side) are inside the box ...
    assert left <= 0.22 * size and right >= 0.78 * size and top <= 0.22 * size and bottom >= 0.78 * size
    # ... the letter box and the arrow are not, and the crop is smaller than the image
    assert top > 22 or left > 30
    assert (bottom - top) * (right - left) < 0.8 * size * size
    assert crop.image.shape == (bottom - top, right - left, 3)
    # outside the lungs is black: the crop's corners lie outside the body's lungs
    assert crop.image[0, 0].max() == 0 and crop.image[-1, -1].max() == 0
    # inside the lungs the pixels are untouched
    cy, cx = int(0.5 * size) - top, int(0.33 * size) - left
    assert np.array_equal(crop.image[cy, cx], rgb[int(0.5 * size), int(0.33 * size)])


@pytest.mark.parametrize("image, reason", [
    (np.full((64, 64, 3), 90, np.uint8), "blank"),
    (np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)), "no dark lung-like region"),
])
def test_no_lungs_falls_back_to_full_image(image, reason):
    crop = crop_lungs(image)
    assert not crop.found and reason in crop.reason
    assert crop.image is image and crop.bbox == (0, 0, 64, 64)


def test_prepare_image_reports_the_fallback():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((40, 40), 128, np.uint8)).save(buf, format="PNG")
    prepared = prepare_image(buf.getvalue(), crop="lungs")
    assert prepared.crop_fallback == "blank image"
    assert prepared.model_input((16, 16)).shape == (16, 16, 3)
    assert prepare_image(buf.getvalue()).crop is None


@pytest.mark.slow  # the crop through extract, fit, evaluate, predict and explain
def test_crop_is_part_of_the_cache_and_the_model(workspace, tmp_path):
    root, data, _ = workspace
    features = tmp_path / "features"
    common = ("-b", "mobilenetv2", "--weights", "none", "--data", data, "--features-dir", features,
              "--batch-size", "16")
    assert run("extract", *common).exit_code == 0
    lungs = run("extract", *common, "--crop", "lungs")
    assert lungs.exit_code == 0, lungs.output
    assert "0 cached, 48 new" in lungs.output  # its own cache, not the full-image one
    caches = sorted(features.glob("*.h5"))
    assert len(caches) == 2
    # with both cached, fit needs to be told which (and says how)
    model = tmp_path / "m.joblib"
    ambiguous = run("fit", "--clf", "logreg", "--data", data, "--features-dir", features, "--model", model)
    assert ambiguous.exit_code == 1 and "--crop" in ambiguous.output
    fitted = run("fit", "--clf", "logreg", "--data", data, "--features-dir", features, "--model", model,
                 "--crop", "lungs", "--cv-folds", "3")
    assert fitted.exit_code == 0, fitted.output
    (entry,) = json.loads(model.with_suffix(".json").read_text())["backbones"]
    assert (entry["crop"], entry["crop_version"]) == ("lungs", LUNG_CROP_VERSION)
    # predict and evaluate follow the model's crop; --crop there only checks it
    ok = run("evaluate", "--model", model, "--data", data, "--features-dir", features, "--crop", "lungs",
             "--report-dir", tmp_path / "r")
    assert ok.exit_code == 0, ok.output
    wrong = run("predict", data / "CT_COVID", "--model", model, "--features-dir", features, "--crop", "none",
                "--out", tmp_path / "p.csv")
    assert wrong.exit_code == 1 and "trained with --crop lungs" in wrong.output
    # heatmaps of a cropped model are drawn inside the crop box on the full slice
    from classifiers.presentation.heatmaps import heat_on_slice
    from classifiers.workflows.explain import ModelExplainer
    from classifiers.workflows.model import load_model
    from covidct_core.run_context import RunContext

    slice_path = sorted((data / "CT_COVID").iterdir())[1]
    expl = ModelExplainer(load_model(model, RunContext(features))).explain(slice_path)
    original, heat = heat_on_slice(expl)
    top, left, bottom, right = expl.prepared.crop.bbox
    assert expl.prepared.crop.found and heat.shape == original.shape[:2]
    assert np.isnan(heat[:top]).all() and np.isfinite(heat[top:bottom, left:right]).all()
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "one.png").write_bytes(slice_path.read_bytes())
    explained = run("predict", scans, "--model", model, "--features-dir", features, "--explain",
                    "--explain-dir", tmp_path / "heat", "--out", tmp_path / "p.csv")
    assert explained.exit_code == 0 and len(list((tmp_path / "heat").glob("*.png"))) == 1, explained.output


@needs_shared(SHARED_DATA)
def test_finds_lungs_in_real_slices():
    files = sorted((SHARED_DATA / "CT_COVID").iterdir()) + sorted((SHARED_DATA / "CT_NonCOVID").iterdir())
    sample = random.Random(0).sample(files, 60)
    found, areas = 0, []
    for path in sample:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        crop = crop_lungs(rgb)
        found += crop.found
        if crop.found:
            areas.append(crop.image.shape[0] * crop.image.shape[1] / (rgb.shape[0] * rgb.shape[1]))
    assert found >= 55  # 14 of all 746 slices fall back (BENCHMARKS.md)
    assert 0.3 < np.median(areas) < 0.95  # a crop, not the whole slice nor a sliver


def disc_slice(size: int = 192, disc: int = 170) -> np.ndarray:
    """A MosMed-like slice: black corners outside a light field-of-view disc about as bright
    as the body (their levels: corners 0, lungs 108, disc 170, body 174), two lungs inside.
    Otsu on the whole image only separates the corners from the rest."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.zeros((size, size))
    img[(yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.48 ** 2] = disc                      # the disc
    img[((yy - 0.55) / 0.3) ** 2 + ((xx - 0.5) / 0.42) ** 2 < 1] = 174            # the body
    for cx in (0.33, 0.67):
        img[((yy - 0.52) / 0.22) ** 2 + ((xx - cx) / 0.12) ** 2 < 1] = 108        # the lungs
    img += rng.normal(0, 4, img.shape)
    return np.repeat(np.clip(img, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def test_lungs_are_found_inside_a_field_of_view_disc():
    from scipy import ndimage as ndi

    from feature_extractor.lungs.crop import _lungs_in

    rgb = disc_slice()
    assert _lungs_in(ndi.median_filter(rgb[..., 0].astype(float), 3), None)[0] is None  # version 1's search
    crop = crop_lungs(rgb)
    assert crop.found, crop.reason
    top, left, bottom, right = crop.bbox
    size = rgb.shape[0]
    # both lungs (x 0.21-0.79, y 0.30-0.74) are in the box; the disc's edge (x < 0.05 or > 0.95) is not
    assert left <= 0.22 * size and right >= 0.78 * size and top <= 0.31 * size and bottom >= 0.73 * size
    assert left > 0.05 * size and right < 0.95 * size
    assert (bottom - top) * (right - left) < 0.6 * size * size


def test_lung_field_histogram_is_equalized_inside_the_mask_only():
    rgb = disc_slice()
    plain, equalized = crop_lungs(rgb), crop_lungs(rgb, equalize=True)
    assert plain.found and equalized.found and plain.bbox == equalized.bbox
    inside = plain.image[..., 0] > 0
    values = equalized.image[..., 0][inside]
    assert values.min() < 30 and values.max() > 225  # the lungs now span the grey levels
    assert not equalized.image[~inside].any()        # outside the lungs stays black
    assert (equalized.image[..., 0] == equalized.image[..., 2]).all()


def test_body_crop_gives_a_square_body_without_the_field_of_view_disc():
    from feature_extractor.lungs.body import crop_body

    rgb = disc_slice(disc=125)  # MosMed's disc (air in a lung window) is darker than soft tissue
    crop = crop_body(rgb)
    assert crop.found and crop.kind == "body", crop.reason
    side = rgb.shape[0]
    top, left, bottom, right = crop.bbox
    # the body (x 0.08-0.92, y 0.28-0.82 of the image) and not the disc (0.02-0.98)
    assert 0.04 * side < left <= 0.09 * side and 0.91 * side <= right < 0.96 * side
    assert 0.2 * side < top <= 0.29 * side and 0.81 * side <= bottom < 0.9 * side
    assert crop.image.shape[0] == crop.image.shape[1] == right - left
    t, l, b, r = crop.inner
    assert (b - t, r - l) == (bottom - top, right - left) and not crop.image[:t].any()
    blank = crop_body(np.zeros((64, 64, 3), np.uint8))
    assert not blank.found and blank.reason == "blank image" and blank.image.shape == (64, 64, 3)


def test_each_crop_has_its_own_algorithm_version():
    from feature_extractor.feature_spec import crop_version
    from feature_extractor.lungs.body import BODY_CROP_VERSION

    assert [crop_version(c) for c in ("none", "lungs", "lungs-equalized", "body")] == [
        0, LUNG_CROP_VERSION, LUNG_CROP_VERSION, BODY_CROP_VERSION]
