"""The lungs and lesion segmentation network: lesion data checks, the network on synthetic slices (it
learns lungs and an opacity in a few epochs), sides from the slice, specks below the minimum area, the
maps and their numbers, one pass per slice, the bundle and the runtimes."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from classifiers.workflows.lesions.evaluate import SliceScore, agreement
from covidct_core.errors import DatasetError
from feature_extractor.segmentation.lesion_data import check_masks, load_lesion_folder
from tests.conftest import QUICK
from tests.helpers import lesion_slice, make_lesion_data


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_lesion_data_and_its_mask_checks(tmp_path):
    folder = make_lesion_data(tmp_path / "les", patients=2, per_patient=2)
    data = load_lesion_folder(folder)
    check_masks(data)  # a good folder passes
    assert len(data.slices) == 4 and data.describe()["patients"] == 2 and data.slices[0].infected == 1
    mask = folder / "masks" / "p0_z000_infection.png"
    original = mask.read_bytes()
    Image.new("L", (50, 50)).save(mask)
    with pytest.raises(DatasetError, match=r"p0_z000_infection.png is 50x50 px but its slice .*p0_z000.png is 96x96"):
        check_masks(data)
    mask.write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="p0_z000_infection.png .* cannot be read"):
        check_masks(data)
    flipped = np.asarray(Image.open(folder / "masks" / "p0_z000_lungs.png")) == 0
    mask.write_bytes(original)
    Image.fromarray(np.where(flipped, 255, 0).astype(np.uint8)).save(folder / "masks" / "p0_z000_lungs.png")
    with pytest.raises(DatasetError, match="lies inside the lungs .*flipped or shifted"):
        check_masks(data)


def test_dice_and_auc_on_known_answers():
    def s(group, infected, predicted, inter, total, lung_share=0.3):
        return SliceScore("src", group, infected, None, lung_share, predicted, inter, total)

    scores = [s("a", 1, 0.4, 30, 100), s("a", 0, 0.1, 0, 20), s("b", 1, 0.2, 10, 80), s("b", 0, 0.3, 0, 0)]
    m = agreement(scores)
    assert m["pixel_dice"] == pytest.approx(2 * 40 / 200)
    assert m["pixel_dice_by_patient"]["a"] == pytest.approx(2 * 30 / 120)
    assert m["slice_auc"] == pytest.approx(0.75)  # one of four pairs ranked wrong
    assert m["within_patient"]["a"]["auc"] == 1.0 and m["within_patient"]["b"]["auc"] == 0.0


def test_the_slice_goes_to_the_network_square_and_comes_back_at_its_own_pixels():
    from feature_extractor.segmentation.slices import SegmentationSlice, right_on_image_left

    grey = np.zeros((40, 80), np.float32)
    grey[:, 60:] = 200.0
    s = SegmentationSlice(grey)
    x = s.network_input(32)
    assert x.shape == (32, 32) and x[:6].max() == 0 and x[-6:].max() == 0  # padded above and below to a square
    back = s.from_network(np.repeat(x[..., None], 2, axis=-1))
    assert back.shape == (40, 80, 2) and np.abs(back[..., 0] - grey).mean() < 20
    assert right_on_image_left((1, 0, 0)) and right_on_image_left((-1, 0, 0)) is False
    assert right_on_image_left(None) is None and right_on_image_left((0, 1, 0)) is None  # not an axial row


def synthetic_probabilities(size: int, specks: bool = False) -> np.ndarray:
    """(size, size, 4) network probabilities: the image-left lung and the image-right lung (a lesion in the
    image-left one), or specks of a few pixels only."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    left = ((yy - 0.5) / 0.3) ** 2 + ((xx - 0.3) / 0.15) ** 2 < 1
    right = ((yy - 0.5) / 0.3) ** 2 + ((xx - 0.7) / 0.15) ** 2 < 1
    p = np.zeros((size, size, 4), np.float32)
    p[..., 0], p[left, 1], p[right, 2] = 1.0, 1.0, 1.0
    p[left | right, 0] = 0.0
    if specks:
        for y, x in ((30, 20), (34, 44), (25, 40)):
            p[y:y + 2, x:x + 2, 3] = 0.9
    else:
        p[(yy - 0.5) ** 2 + (xx - 0.3) ** 2 < 0.004, 3] = 0.9
    return p


def test_sides_come_from_the_slice_and_a_mirror_swaps_them():
    from classifiers.workflows.lesions.summary import MinimumArea, segmentation_of
    from feature_extractor.lungs.sides import LEFT, RIGHT
    from feature_extractor.segmentation.slices import SegmentationSlice

    grey, minimum = np.full((64, 64), 100.0, np.float32), MinimumArea(0.0, 0.0)
    supine = segmentation_of(SegmentationSlice(grey), synthetic_probabilities(64), 0.5, minimum)
    assert (supine.sides[:, :30][supine.lungs[:, :30]] == RIGHT).all()  # the radiological convention
    assert supine.summary.lesion_share_right_lung > 0 and supine.summary.lesion_share_left_lung == 0
    mirrored = segmentation_of(SegmentationSlice(grey, (0.7, 0.7), right_on_image_left=False, dicom=True),
                               synthetic_probabilities(64), 0.5, minimum)
    assert (mirrored.sides[:, :30][mirrored.lungs[:, :30]] == LEFT).all()  # the header says the image is mirrored
    assert mirrored.summary.lesion_share_left_lung == supine.summary.lesion_share_right_lung
    assert mirrored.summary.lung_note is None and mirrored.summary.lesion_area_mm2 == pytest.approx(
        supine.lesion.sum() * 0.49)
    unknown = segmentation_of(SegmentationSlice(grey, dicom=True), synthetic_probabilities(64), 0.5, minimum)
    assert "image's side" in unknown.summary.lung_note  # a DICOM without ImageOrientationPatient says so


def test_specks_below_the_minimum_area_do_not_count_and_a_normal_lung_scores_0():
    from classifiers.records.severity import severity
    from classifiers.workflows.lesions.summary import MinimumArea, segmentation_of
    from feature_extractor.segmentation.slices import SegmentationSlice

    s = SegmentationSlice(np.full((64, 64), 100.0, np.float32), (0.7, 0.7), True, dicom=True)
    kept = segmentation_of(s, synthetic_probabilities(64, specks=True), 0.5, MinimumArea(0.0, 0.0))
    assert kept.lesion.sum() == 12 and kept.summary.lesion_parts == 3
    cleared = segmentation_of(s, synthetic_probabilities(64, specks=True), 0.5, MinimumArea(5.0, 40.0))
    assert cleared.lesion.sum() == 0 and cleared.summary.lesion_fraction == 0.0  # 4 px of 0.49 mm2 < 5 mm2
    assert severity([cleared.summary.areas()] * 3).severity_score == 0
    assert severity([kept.summary.areas()] * 3).severity_score > 0  # the specks alone would score


@pytest.mark.slow
def test_a_network_trained_for_a_few_epochs_finds_the_lungs_and_the_opacity(trained_network):
    fit, _, _ = trained_network
    agreement = fit.record["out_of_fold"]["les"]
    assert agreement["lung_dice"] > 0.8 and agreement["lesion_dice"] > 0.2  # patients it never saw
    assert fit.record["segmenter"]["members"] == 2 and fit.segmenter.threshold_ == 0.5
    assert all(0.2 <= v["threshold"] <= 0.8 for v in fit.record["segmenter"]["validation"])


@pytest.mark.slow  # Keras
def test_a_members_cut_off_is_folded_into_its_lesion_bias():
    """A member cuts at 0.5 where it cut at its own cut-off, lungs untouched (estimators/segmenter.py)."""
    import keras

    from classifiers.estimators.segmenter import CUT, _with_cut
    from feature_extractor.segmentation.network import decoder, probabilities

    keras.utils.set_random_seed(1)
    shapes = [(8, 8, 4), (4, 4, 4), (2, 2, 4), (1, 1, 4)]
    net = decoder(keras, shapes, 32, 8, 4)
    x = [np.random.default_rng(k).normal(size=(2, *s)).astype(np.float32) for k, s in enumerate(shapes)]
    x.append(np.random.default_rng(9).normal(size=(2, 32, 32, 1)).astype(np.float32))
    before = np.asarray(probabilities(keras, net(x)))
    levels = np.unique(before[..., 3])
    cut = float(levels[len(levels) // 3:][:2].mean())   # between two of its values: no pixel sits on it
    net.set_weights(_with_cut(net.get_weights(), cut))
    after = np.asarray(probabilities(keras, net(x)))
    np.testing.assert_allclose(after[..., :3], before[..., :3], atol=1e-6)
    np.testing.assert_array_equal(after[..., 3] >= CUT, before[..., 3] >= cut)


@pytest.mark.slow
def test_the_runtime_gives_the_keras_maps_and_a_mirror_swaps_the_lungs(trained_network, tmp_path):
    """The exported network (ONNX Runtime) maps a slice as the decoders do in Keras, and the mirror of a
    slice gets the other side's labels where its lungs now lie."""
    from classifiers.workflows.lesions.maps import LesionMapper
    from covidct_core.run_context import RunContext
    from feature_extractor.feature_spec import FeatureSpec
    from feature_extractor.segmentation.encoder import MapExtractor

    fit, settings, context = trained_network
    spec = FeatureSpec.from_record(fit.record["maps"])
    img, lungs, _ = lesion_slice(7, True, 64)
    grey = img.astype(np.float32)[None]
    onnx = LesionMapper(fit.segmenter, spec, settings, RunContext(tmp_path / "f", runtime="onnxruntime"))
    extractor = MapExtractor(spec, RunContext(tmp_path / "f", runtime="tensorflow"))
    x = extractor.network_input(grey)
    keras_p = fit.segmenter.predict_proba(extractor.maps_of_input(x, np.float32), x[..., 0])
    np.testing.assert_allclose(onnx.network.probabilities(grey), keras_p, atol=1e-3)
    path, mirror = tmp_path / "slice.png", tmp_path / "mirror.png"
    Image.fromarray(img).save(path)
    Image.fromarray(img[:, ::-1].copy()).save(mirror)
    a, b = onnx.segment(path), onnx.segment(mirror)
    both = a.lungs & b.lungs[:, ::-1]
    assert both.sum() > 0.5 * lungs.sum()
    assert ((a.sides[both] != b.sides[:, ::-1][both]).mean()) > 0.9  # the same lung, the other label


@pytest.mark.slow  # the fit trains the network (about 30 s)
def test_fit_with_lesion_data_saves_the_network_with_its_provenance(lesion_model):
    from classifiers.workflows.bundle import load_bundle

    root, _, lesions, model = lesion_model
    card = json.loads(model.with_suffix(".json").read_text())
    lesion = card["lesion"]
    assert lesion["segmenter"]["members"] == 2 and lesion["segmenter"]["params"]["width"] == 8
    assert lesion["data"]["patients"] == 3 and len(lesion["data"]["fingerprint"]) == 64
    assert lesion["maps"]["input_size"] == [64, 64] and lesion["maps"]["map_layers"][0] == "block_2_add"
    assert set(lesion["out_of_fold"]["lesion-set"]) >= {"lesion_dice", "lung_dice", "lesion_inside_lungs"}
    assert card["format_version"] == 6 and card["answers"]["finding"]["n_slices"] > 0
    bundle = load_bundle(model)  # the decoders' weights round-trip the bundle
    assert len(bundle.segmenter.members_) == 2 and bundle.segmenter.threshold_ == lesion["segmenter"]["lesion_threshold"]


@pytest.mark.slow
def test_predict_writes_lesion_fraction_and_maps_at_the_images_size_in_one_pass(lesion_model, tmp_path, monkeypatch):
    from feature_extractor.imaging import decode

    root, data, lesions, model = lesion_model
    decoded = []
    with decode.DECODED.lock:  # nothing of these slices kept from the fixture's fit
        decode.DECODED.entries.clear()
        decode.DECODED.used = 0
    original = decode._decode_pixels
    monkeypatch.setattr(decode, "_decode_pixels", lambda data, hint: decoded.append(1) or original(data, hint))
    out, maps = tmp_path / "p.csv", tmp_path / "maps"
    result = run("predict", lesions / "slices", "--model", model, "--features-dir", tmp_path / "fresh-features",
                 "--out", out, "--lesion-maps", maps)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 18 and len(decoded) == 18  # each slice decoded once: backbone, network, maps
    with_lungs = [r for r in rows if r["lesion_fraction"]]  # a few epochs' network: most slices' lungs found
    assert len(with_lungs) >= 12 and all(0 <= float(r["lesion_fraction"]) <= 1 for r in with_lungs)
    lesion = Image.open(maps / "p0_z000_lesion.png")
    assert lesion.size == (96, 96) and lesion.mode == "L"
    assert set(np.unique(np.asarray(Image.open(maps / "p0_z000_lungs.png")))) <= {0, 128, 255}
    for row in rows:  # the binary map is what the number came from
        stem = Path(row["path"]).stem
        binary = np.asarray(Image.open(maps / f"{stem}_lesion.png")) > 0
        inside = np.asarray(Image.open(maps / f"{stem}_lungs.png")) > 0
        assert set(np.unique(np.asarray(Image.open(maps / f"{stem}_lesion.png")))) <= {0, 255}
        assert not (binary & ~inside).any()
        if inside.any():
            assert abs(binary.sum() / inside.sum() - float(row["lesion_fraction"])) < 1e-3
        assert Image.open(maps / f"{stem}_lesion_prob.png").size == (96, 96)
    assert rows[0]["lesion_map"].endswith("p0_z000_lesion.png")
    again = run("predict", lesions / "slices", "--model", model, "--features-dir", tmp_path / "fresh-features",
                "--out", out)
    assert again.exit_code == 0 and list(csv.DictReader(open(out)))[0]["lesion_fraction"] == rows[0]["lesion_fraction"]


@pytest.mark.slow
def test_the_finding_is_given_where_the_covid_answer_is_not_assessable(lesion_model, tmp_path):
    """The lesion slices are unlike the COVID model's training images as a set (another source): no
    COVID answer, but every slice with lungs gets its finding, and the card says how it was calibrated."""
    root, data, lesions, model = lesion_model
    out = tmp_path / "p.csv"
    result = run("predict", lesions / "slices", "--model", model, "--features-dir", root / "features", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert {r["answer"] for r in rows} == {"not assessable"} and "unlike every source" in rows[0]["answer_note"]
    assert all(r["finding"] in ("opacities", "clear", "uncertain", "not assessable") for r in rows)
    counts = {f: sum(r["finding"] == f for r in rows) for f in ("opacities", "clear", "uncertain", "not assessable")}
    assert (f"lesion finding: {counts['opacities']} opacities, {counts['clear']} clear, "
            f"{counts['uncertain']} uncertain, {counts['not assessable']} not assessable") in result.output
    finding = json.loads(model.with_suffix(".json").read_text())["answers"]["finding"]
    assert finding["n_slices"] <= 18 and len(finding["oof"]) == finding["n_slices"]


@pytest.mark.slow
def test_a_dicom_study_gets_its_severity_and_a_nifti_label_volume_without_identity(lesion_model, tmp_path):
    import nibabel as nib
    import pydicom
    from pydicom.uid import generate_uid

    from feature_extractor.imaging.geometry import series_grid
    from tests.helpers import write_series

    root, _, _, model = lesion_model
    study = tmp_path / "archive" / "ward" / "case-1"
    paths = write_series(study, generate_uid(), n=5, z0=20.0, step=-2.5)  # file order runs head to feet
    out, maps = tmp_path / "out" / "slices.csv", tmp_path / "maps"
    result = run("predict", tmp_path / "archive", "--studies", "--model", model, "--features-dir",
                 root / "features", "--out", out, "--lesion-maps", maps)
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(open(out.with_name("studies.csv"))))
    if row["severity_score"]:
        assert 0 <= int(row["severity_score"]) <= 30 and "third" in row["zone_scores"]
        assert row["opacity_right_upper_third"] != "" and 0 <= float(row["opacity_percent"]) <= 100
    (volume,) = maps.glob("*.nii.gz")
    assert "PID98765" not in str(volume) and volume.name == "ward__case-1.nii.gz"
    image = nib.load(str(volume))
    header = image.header
    for field in ("descrip", "aux_file", "intent_name"):
        assert b"PID98765" not in header[field].tobytes() and b"SECRET" not in header[field].tobytes()
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))  # feet to head
    assert np.allclose(image.affine, series_grid([pydicom.dcmread(p) for p in ordered]).ras)
    assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
    data = np.asarray(image.dataobj)
    assert data.shape == (64, 64, 5) and set(np.unique(data)) <= {0, 1, 2, 3, 4}
    assert image.affine[2, 2] == pytest.approx(2.5)  # the series' order, whatever the files' names


def test_bad_masks_stop_fit_before_anything_is_written(workspace, tmp_path):
    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path / "bad", patients=2, per_patient=2)
    Image.new("L", (40, 40)).save(lesions / "masks" / "p1_z001_lungs.png")
    model = tmp_path / "m.joblib"
    result = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
                 "--lesion-data", lesions, *QUICK)
    assert result.exit_code == 1 and "p1_z001_lungs.png is 40x40 px" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not model.exists() and not model.with_suffix(".json").exists()


def test_lesion_options_are_refused_without_lesion_data(workspace, logreg_model, tmp_path):
    root, data, _ = workspace
    _, model = logreg_model
    fit = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--lesion-features")
    assert fit.exit_code == 2 and "--lesion-features cannot be used with no --lesion-data" in fit.output
    side = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--lesion-epochs", 3)
    assert side.exit_code == 2 and "--lesion-epochs cannot be used with no --lesion-data" in side.output
    maps = run("predict", data / "CT_COVID", "--model", model, "--features-dir", root / "features",
               "--lesion-maps", tmp_path / "maps")
    assert maps.exit_code == 1 and "has no segmentation network" in maps.output


@pytest.mark.slow  # Keras (the fits: about 30 s)
def test_both_cut_off_rules_fit_and_a_member_cuts_at_its_own():
    """cut_off="member": each member's own cut-off (recorded) is in its weights and the mean cuts at 0.5;
    "pooled": one cut-off from the out-of-fold maps (estimators/segmenter.py)."""
    from classifiers.estimators.segmenter import CUT, THRESHOLDS, LungLesionSegmenter, SegmentationData

    rng = np.random.default_rng(0)
    n, side = 6, 32
    maps = [rng.normal(size=(n, side // s, side // s, 4)).astype(np.float16) for s in (4, 8, 16, 32)]
    slices = rng.normal(size=(n, side, side)).astype(np.float16)
    lungs = np.zeros((n, side, side), np.uint8)
    lungs[:, 8:24, 4:14], lungs[:, 8:24, 18:28] = 1, 2
    lesion = np.zeros((n, side, side), np.uint8)
    lesion[:, 10:16, 6:12] = 1
    data = SegmentationData(maps, slices, lungs, lesion, np.repeat(["a", "b", "c"], 2), np.ones(n, bool), 1)
    for rule in ("member", "pooled"):
        fitted = LungLesionSegmenter(width=8, epochs=2, members=3, batch_size=4, cut_off=rule).fit(data)
        assert all(v["threshold"] in THRESHOLDS for v in fitted.validation_)
        assert (fitted.threshold_ == CUT) if rule == "member" else (fitted.threshold_ in THRESHOLDS)
        assert fitted.describe()["cut_off"] == rule
    with pytest.raises(ValueError, match="'cut_off' parameter"):
        LungLesionSegmenter(cut_off="median").fit(data)


def test_one_decoder_is_refused_in_one_line(workspace, tmp_path):
    """Every training patient needs a decoder that did not see it (the cut-off, the finding's thresholds)."""
    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path / "lesions", patients=2, per_patient=2)
    result = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model",
                 tmp_path / "m.joblib", "--lesion-data", lesions, "--lesion-members", 1)
    assert result.exit_code == 2 and "'--lesion-members': 1 is not in the range 2<=x<=20" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.joblib").exists()
    from classifiers.estimators.segmenter import LungLesionSegmenter
    with pytest.raises(ValueError, match="'members' parameter"):
        LungLesionSegmenter(members=1).fit(None)


@pytest.mark.slow
def test_lesion_features_join_the_classifier_and_the_explanation(lesion_model, tmp_path):
    root, data, lesions, _ = lesion_model
    model = tmp_path / "with-lesions.joblib"
    fit = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
              "--cv-folds", "3", "--lesion-data", lesions, *QUICK, "--lesion-features")
    assert fit.exit_code == 0, fit.output
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["lesion"]["classifier_features"][0] == "lesion_fraction" and card["fit"]["lesion_features"]
    out = tmp_path / "p.csv"
    predicted = run("predict", data / "CT_COVID", "--model", model, "--features-dir", root / "features", "--out", out,
                    "--explain", "--explain-method", "lesion", "--explain-dir", tmp_path / "heat")
    assert predicted.exit_code == 0, predicted.output
    assert len(list((tmp_path / "heat").glob("*.png"))) == 24
    gradcam = run("predict", data / "CT_COVID", "--model", model, "--features-dir", root / "features", "--out", out,
                  "--explain", "--explain-method", "gradcam", "--explain-dir", tmp_path / "cam")
    assert gradcam.exit_code == 0, gradcam.output
