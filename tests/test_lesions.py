"""The lesion branch: lung masks, hypercolumns, lesion data checks, the head, lesion maps."""
import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from classifiers.workflows.lesions.evaluate import SliceScore, agreement
from feature_extractor.dense.lesion_data import check_masks, load_lesion_folder
from covidct_core.errors import DatasetError
from feature_extractor.lungs.mask import lung_mask, lung_mask_hu
from tests.conftest import MOBILENETV2_FILE, SHARED, needs_shared
from tests.helpers import lesion_slice, make_lesion_data

LESION_SLICES = SHARED / "data" / "lesion-slices"


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_the_lung_mask_keeps_ground_glass_inside_and_finds_cut_figures():
    img, lungs, infection = lesion_slice(1, True, 192)
    found = lung_mask(img.astype(np.float32))
    assert found.note is None and dice(found.mask, lungs) > 0.9
    assert (found.mask & infection).sum() / infection.sum() > 0.9  # ground glass is lung
    cut = img[20:172, 5:187]  # a figure cut inside the chest: the image border closes it
    assert dice(lung_mask(cut.astype(np.float32)).mask, lungs[20:172, 5:187]) > 0.85
    blank = lung_mask(np.zeros((64, 64), np.float32))
    assert not blank.found and blank.note.startswith("no lung found")


def test_the_lung_mask_reads_hounsfield_units():
    hu = np.full((128, 128), -1000.0)
    yy, xx = np.mgrid[0:128, 0:128] / 128
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.47) ** 2 < 1
    hu[body] = 40
    lungs = np.zeros_like(body)
    for cx in (0.3, 0.7):
        lungs |= ((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.15) ** 2 < 1
    hu[lungs] = -850
    hu[lungs & (yy > 0.6)] = -500  # ground glass at the bases
    found = lung_mask_hu(hu)
    assert found.note is None and dice(found.mask, lungs) > 0.9


def test_hypercolumns_have_the_grid_and_stay_aligned():
    from feature_extractor.dense.hypercolumns import HypercolumnExtractor
    from feature_extractor.dense.slices import DenseSlice
    from feature_extractor.feature_spec import FeatureSpec
    from feature_extractor.lungs.mask import LungMask

    ex = HypercolumnExtractor(FeatureSpec("mobilenetv2", "none", input_size=(64, 64), grid=8))
    blank = np.full((64, 64), 80.0, np.float32)
    right = blank.copy()
    right[:, 40:] = 230.0
    empty = LungMask(np.zeros((64, 64), bool))
    grids = ex.grids([DenseSlice(blank, empty), DenseSlice(right, empty)])
    assert grids.shape == (2, 8, 8, 144 + 192 + 576) and grids.dtype == np.float16
    change = np.abs(grids[1].astype(np.float32) - grids[0]).mean(axis=(0, 2))  # per column of cells
    assert change[6:].mean() > 3 * change[:3].mean()  # the change is where the image changed


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


@pytest.fixture(scope="module")
def lesion_model(workspace, tmp_path_factory):
    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path_factory.mktemp("lesions") / "lesion-set")
    model = root / "models" / "lesion.joblib"
    result = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
                 "--cv-folds", "3", "--lesion-data", lesions, "--lesion-input", 64, "--lesion-grid", 8,
                 "--lesion-heads", "logreg,sgd")
    assert result.exit_code == 0, result.output
    return root, data, lesions, model


def test_fit_with_lesion_data_saves_a_head_with_its_provenance(lesion_model):
    import json

    root, _, lesions, model = lesion_model
    card = json.loads(model.with_suffix(".json").read_text())["lesion"]
    assert card["head"]["classifier"] in ("logreg", "sgd") and 0 <= card["head"]["cv_cell_dice"] <= 1
    assert card["data"]["patients"] == 3 and len(card["data"]["fingerprint"]) == 64
    assert card["dense"]["grid"] == 8 and card["dense"]["input_size"] == [64, 64]
    assert card["dense"]["dense_layers"] == ["block_3_expand_relu", "block_6_expand_relu", "block_13_expand_relu"]


@pytest.mark.slow
def test_predict_writes_lesion_fraction_and_maps_at_the_images_size(lesion_model, tmp_path):
    root, data, lesions, model = lesion_model
    out = tmp_path / "p.csv"
    maps = tmp_path / "maps"
    result = run("predict", lesions / "slices", "--model", model, "--features-dir", root / "features",
                 "--out", out, "--lesion-maps", maps)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 18 and all(0 <= float(r["lesion_fraction"]) <= 1 for r in rows)
    assert all(0.1 < float(r["lung_fraction"]) < 0.6 for r in rows)  # two lungs of a synthetic slice
    lesion = Image.open(maps / "p0_z000_lesion.png")
    assert lesion.size == (96, 96) and lesion.mode == "L"
    lungs = np.asarray(Image.open(maps / "p0_z000_lungs.png"))
    assert set(np.unique(lungs)) == {0, 128, 255}  # the right lung (the image's left) 255, the left 128
    assert lungs[:, :40][lungs[:, :40] > 0].min() == 255 and lungs[:, 56:][lungs[:, 56:] > 0].max() == 128
    for row in rows:  # the binary map is what the number came from
        stem = Path(row["path"]).stem
        binary = np.asarray(Image.open(maps / f"{stem}_lesion.png")) > 0
        inside = np.asarray(Image.open(maps / f"{stem}_lungs.png")) > 0
        assert set(np.unique(np.asarray(Image.open(maps / f"{stem}_lesion.png")))) <= {0, 255}
        assert not (binary & ~inside).any()
        assert abs(binary.sum() / inside.sum() - float(row["lesion_fraction"])) < 1e-3
        assert Image.open(maps / f"{stem}_lesion_prob.png").size == (96, 96)
    assert rows[0]["lesion_map"].endswith("p0_z000_lesion.png")
    again = run("predict", lesions / "slices", "--model", model, "--features-dir", root / "features", "--out", out)
    assert again.exit_code == 0 and list(csv.DictReader(open(out)))[0]["lesion_fraction"] == rows[0]["lesion_fraction"]


@pytest.mark.slow
def test_the_finding_is_given_where_the_covid_answer_is_not_assessable(lesion_model, tmp_path):
    """The lesion slices are unlike the COVID model's training images as a set (another source): no
    COVID answer, but every slice with lungs gets its finding, and the card says how it was calibrated."""
    import json

    root, data, lesions, model = lesion_model
    out = tmp_path / "p.csv"
    result = run("predict", lesions / "slices", "--model", model, "--features-dir", root / "features", "--out", out)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out)))
    assert {r["answer"] for r in rows} == {"not assessable"} and "unlike every source" in rows[0]["answer_note"]
    assert all(r["finding"] in ("opacities", "clear", "uncertain") for r in rows)
    counts = {f: sum(r["finding"] == f for r in rows) for f in ("opacities", "clear", "uncertain")}
    assert (f"lesion finding: {counts['opacities']} opacities, {counts['clear']} clear, "
            f"{counts['uncertain']} uncertain, 0 not assessable") in result.output  # the summary says it too
    finding = json.loads(model.with_suffix(".json").read_text())["answers"]["finding"]
    assert finding["n_slices"] == 18 and finding["n_infected"] == 9 and len(finding["oof"]) == 18


@pytest.mark.slow
def test_a_dicom_study_gets_its_severity_and_a_nifti_label_volume_without_identity(lesion_model, tmp_path):
    import nibabel as nib
    import pydicom
    from pydicom.uid import generate_uid

    from classifiers.presentation.label_volumes import series_affine
    from tests.helpers import write_series

    root, _, _, model = lesion_model
    study = tmp_path / "archive" / "ward" / "case-1"
    paths = write_series(study, generate_uid(), n=5, z0=20.0, step=-2.5)  # file order runs head to feet
    out, maps = tmp_path / "out" / "slices.csv", tmp_path / "maps"
    result = run("predict", tmp_path / "archive", "--studies", "--model", model, "--features-dir",
                 root / "features", "--out", out, "--lesion-maps", maps)
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader(open(out.with_name("studies.csv"))))
    assert row["severity_score"] != "" and 0 <= int(row["severity_score"]) <= 30 and row["zone_scores"]
    assert 0 <= float(row["opacity_percent"]) <= 100
    (volume,) = maps.glob("*.nii.gz")
    assert "PID98765" not in str(volume) and volume.name == "ward__case-1.nii.gz"
    image = nib.load(str(volume))
    header = image.header
    for field in ("descrip", "aux_file", "intent_name"):
        assert b"PID98765" not in header[field].tobytes() and b"SECRET" not in header[field].tobytes()
    ordered = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))  # feet to head
    assert np.allclose(image.affine, series_affine([pydicom.dcmread(p) for p in ordered]))
    data = np.asarray(image.dataobj)
    assert data.shape == (64, 64, 5) and set(np.unique(data)) <= {0, 1, 2, 3} and {1, 2} <= set(np.unique(data))
    assert image.affine[2, 2] == pytest.approx(2.5)  # the series' order, whatever the files' names


@pytest.mark.slow
def test_lesion_data_without_lung_masks_keeps_the_classical_lungs_and_says_so(workspace, tmp_path):
    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path / "no-lungs")
    rows = list(csv.reader(open(lesions / "manifest.csv")))
    column = rows[0].index("lung_mask")
    with open(lesions / "manifest.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([r[:column] + r[column + 1:] for r in rows])
    result = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model",
                 tmp_path / "m.joblib", "--cv-folds", "3", "--lesion-data", lesions, "--lesion-input", 64,
                 "--lesion-grid", 8, "--lesion-heads", "logreg")
    assert result.exit_code == 0, result.output
    assert "lung head: none (no lung masks of two or more patients in the lesion data: the classical lung mask " \
           "is used)" in result.output


def test_bad_masks_stop_fit_before_anything_is_written(workspace, tmp_path):
    root, data, _ = workspace
    lesions = make_lesion_data(tmp_path / "bad", patients=2, per_patient=2)
    Image.new("L", (40, 40)).save(lesions / "masks" / "p1_z001_lungs.png")
    model = tmp_path / "m.joblib"
    result = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
                 "--lesion-data", lesions, "--lesion-input", 64, "--lesion-grid", 8)
    assert result.exit_code == 1 and "p1_z001_lungs.png is 40x40 px" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not model.exists() and not model.with_suffix(".json").exists()


def test_lesion_options_are_refused_without_a_lesion_head(workspace, logreg_model, tmp_path):
    root, data, _ = workspace
    _, model = logreg_model
    fit = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--lesion-features")
    assert fit.exit_code == 2 and "--lesion-features cannot be used with no --lesion-data" in fit.output
    maps = run("predict", data / "CT_COVID", "--model", model, "--features-dir", root / "features",
               "--lesion-maps", tmp_path / "maps")
    assert maps.exit_code == 1 and "has no lesion head" in maps.output


@pytest.mark.slow
def test_lesion_features_join_the_classifier_and_the_explanation(lesion_model, tmp_path):
    import json

    root, data, lesions, _ = lesion_model
    model = tmp_path / "with-lesions.joblib"
    fit = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features", "--model", model,
              "--cv-folds", "3", "--lesion-data", lesions, "--lesion-input", 64, "--lesion-grid", 8,
              "--lesion-heads", "logreg", "--lesion-features")
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


@pytest.mark.slow
@pytest.mark.integration
@needs_shared(LESION_SLICES, MOBILENETV2_FILE)
def test_a_head_trained_on_one_patient_finds_the_lesions_of_another(workspace, tmp_path):
    """Real patients of lesion-slices and the real MobileNetV2: trained on rp5 and rp8 (the head's
    choice needs two patients), measured on rp1."""
    from classifiers.workflows.lesions.evaluate import agreement, score_slice
    from classifiers.settings import LesionSettings
    from classifiers.workflows.lesions.maps import LesionMapper
    from classifiers.workflows.lesions.training import train_lesion_head
    from feature_extractor.dense.lesion_data import LesionData
    from feature_extractor.feature_spec import FeatureSpec
    from covidct_core.run_context import RunContext
    from feature_extractor.weights import WeightsChoice

    data = load_lesion_folder(LESION_SLICES)
    train = LesionData(tuple(s for s in data.slices if s.patient in ("rp5", "rp8")), data.folders)
    test = [s for s in data.slices if s.patient == "rp1"]
    spec = FeatureSpec("mobilenetv2", WeightsChoice("file", str(MOBILENETV2_FILE)), None, (448, 448), grid=56)
    context = RunContext(tmp_path / "features", batch_size=16)
    head, record = train_lesion_head(train, spec, LesionSettings(heads=("logreg",)), context)
    mapper = LesionMapper(head, FeatureSpec.from_record(record["dense"]), context)
    m = agreement([score_slice(s, mapper.lesion_map(s.path)) for s in test])
    assert m["pixel_dice"] > 0.4 and m["lung_dice"] > 0.9 and m["lung_slices_without_mask"] == 0
    assert m["spearman_fraction"] > 0.5
