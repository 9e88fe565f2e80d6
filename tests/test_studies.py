"""Studies: grouping, series choice, ordering, lung slices, aggregation, privacy; on DICOM
written here (pydicom) and on the shared hospital studies."""
import csv
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid

import cli
from classifiers.estimators.study_aggregation import aggregate, choose_aggregation
from feature_extractor.imaging.slice_choice import lung_fraction, slice_hu, slices_to_score
from feature_extractor.imaging.studies import find_studies
from tests.conftest import SHARED, needs_shared
from tests.helpers import SR, chest, write_series, write_slice

SHARED_STUDIES = SHARED / "data" / "dicom-studies"
SECRETS = ("SECRET", "PERSON", "PID98765", "19700101")


def test_a_study_folder_with_a_localizer_a_report_and_two_series(tmp_path):
    study = generate_uid()
    folder = tmp_path / "in" / "study-a"
    thick = write_series(folder, study, n=4, thickness=5.0)
    thin = write_series(folder, study, n=8, thickness=1.0, step=1.0)
    thin = thin[::-1]  # file order says nothing: positions decide
    localizer = write_slice(folder / "scout.dcm", study, thin_series_uid(thin), 0, number=99,
                            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    report = write_slice(folder / "sr.dcm", study, generate_uid(), 0, sop=SR, pixels=False)
    (scan_study,) = find_studies(tmp_path / "in").studies
    assert scan_study.name == "study-a" and scan_study.series.startswith("CT axial 1 mm")
    assert [os.path.basename(p) for p in scan_study.slices] == [os.path.basename(p) for p in thin[::-1]]
    assert scan_study.errors[str(localizer)] == "localizer (scout) image"
    assert scan_study.errors[str(report)] == "modality SR, not CT"
    assert all(scan_study.errors[str(p)] == "another series of the study was used" for p in thick)
    assert any("2 image series" in w for w in scan_study.warnings)


def thin_series_uid(paths):
    import pydicom

    return pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID


def test_two_studies_in_one_folder_are_two_studies_with_unlinkable_names(tmp_path):
    folder = tmp_path / "mixed"
    write_series(folder, generate_uid(), n=3)
    write_series(folder, generate_uid(), n=3)
    names = [s.name for s in find_studies(folder).studies]
    assert len(names) == 2 and all(n.startswith("mixed#") for n in names) and names[0] != names[1]
    assert {s.name for s in find_studies(folder).studies}.isdisjoint(names)  # a new salt each run


def test_uneven_spacing_and_mixed_orientation_are_warned(tmp_path):
    study, series = generate_uid(), generate_uid()
    for i, z in enumerate((0, 2, 4, 10)):
        write_slice(tmp_path / f"s{i}.dcm", study, series, z, number=i + 1)
    write_slice(tmp_path / "tilted.dcm", study, series, 12, number=5, orientation=(1, 0, 0, 0, 0.8, 0.6))
    (study_,) = find_studies(tmp_path).studies
    assert any("uneven slice spacing" in w for w in study_.warnings)
    assert any("another orientation" in w for w in study_.warnings)


def test_slices_outside_the_lungs_are_skipped_and_max_slices_samples_evenly(tmp_path):
    study = generate_uid()
    assert lung_fraction(chest()) > 0.2 and lung_fraction(chest(lungs=False)) < 0.01
    folder = tmp_path / "one-series"
    series = generate_uid()
    for i in range(10):
        write_slice(folder / f"x{i}.dcm", study, series, i * 2, number=i + 1, lungs=2 <= i <= 7)
    (s,) = find_studies(folder).studies
    used, skipped = slices_to_score(s)
    assert [os.path.basename(p) for p in used] == [f"x{i}.dcm" for i in range(2, 8)]
    assert all("outside the lungs" in r for r in skipped.values()) and len(skipped) == 4
    used, skipped = slices_to_score(s, max_slices=3)
    assert [os.path.basename(p) for p in used] == ["x2.dcm", "x4.dcm", "x7.dcm"]  # linspace over the 6
    assert skipped["/".join([str(folder), "x3.dcm"])] == "not sampled (--max-slices 3)"


def test_a_folder_of_png_slices_is_a_study(tmp_path):
    from tests.helpers import ct_like

    (tmp_path / "patient-7").mkdir()
    for i in (10, 2, 1):
        ct_like(i, True).save(tmp_path / "patient-7" / f"slice{i}.png")
    (s,) = find_studies(tmp_path).studies
    assert s.kind == "images" and s.name == "patient-7"
    assert [os.path.basename(p) for p in s.slices] == ["slice1.png", "slice2.png", "slice10.png"]


def test_aggregations_and_their_choice_by_patient():
    p = [0.1, 0.2, 0.9]
    assert aggregate(p, "mean") == pytest.approx(0.4) and aggregate(p, "max") == 0.9
    assert aggregate(p, "top3") == pytest.approx(0.4) and aggregate([0.5, 0.5], "noisy_or") == pytest.approx(0.75)
    # COVID patients: one hot slice among cold ones; non-COVID: uniformly lukewarm
    rng = np.random.default_rng(0)
    oof, y, groups = [], [], []
    for patient in range(40):
        covid = patient % 2
        slices = rng.uniform(0.2, 0.4, 6) if not covid else np.r_[rng.uniform(0.0, 0.2, 5), 0.9]
        oof += list(slices)
        y += [covid] * 6
        groups += [patient] * 6
    choice = choose_aggregation(np.array(oof), np.array(y), np.array(groups))
    assert choice["method"] in ("max", "noisy_or", "top3") and choice["patient_cv_auc"]["max"] == 1.0
    assert choice["patient_cv_auc"]["mean"] < 0.7 and choice["n_patients"] == 40


@pytest.fixture
def study_model(logreg_model):
    return logreg_model


def test_a_librarys_repeated_warnings_are_one_line_each_and_all_of_them_with_verbose(study_model, tmp_path):
    """Headers with an invalid UID make pydicom warn (and log) at every read of every file: without
    -v the command prints each kind once and how often it came; with -v, every one."""
    root, model = study_model
    studies = tmp_path / "archive"
    for i in range(3):
        uid = "1.2.840." + "9" * 60 + f".{i}"  # over the 64 characters of the UI VR
        write_series(studies / f"case-{i}", uid, n=4)
    args = ["predict", str(studies), "--studies", "--model", str(model), "--features-dir", str(root / "features"),
            "--out", str(tmp_path / "out" / "slices.csv")]
    quiet = CliRunner().invoke(cli.main, args)
    assert quiet.exit_code == 0, quiet.output
    lines = quiet.output.strip().splitlines()
    assert len(lines) <= 10, quiet.output
    warned = [line for line in lines if "allowed for VR UI" in line]
    assert len(warned) == 1 and any("times" in line and "-v shows each" in line for line in lines), quiet.output
    loud = CliRunner().invoke(cli.main, ["-v", *args])
    assert loud.exit_code == 0 and loud.output.count("allowed for VR UI") >= 12


@pytest.mark.slow  # fits a model, runs the CLI
def test_predict_studies_writes_one_row_per_study_and_no_identifiers(study_model, tmp_path):
    root, model = study_model
    studies = tmp_path / "archive"
    write_series(studies / "ward" / "case-1", generate_uid(), n=5)
    truncated = write_series(studies / "ward" / "case-2", generate_uid(), n=5)[2]
    truncated.write_bytes(truncated.read_bytes()[:-3000])  # pixel data cut short
    write_slice(studies / "ward" / "case-3" / "PID98765_sr.dcm", generate_uid(), generate_uid(), 0, sop=SR,
                pixels=False)
    out = tmp_path / "out" / "slices.csv"
    result = CliRunner().invoke(cli.main, ["predict", str(studies), "--studies", "--model", str(model),
                                           "--features-dir", str(root / "features"), "--out", str(out)])
    assert result.exit_code == 3, result.output  # done; one slice could not be decoded
    rows = {r["study"]: r for r in csv.DictReader(open(out.with_name("studies.csv"), newline=""))}
    assert list(rows) == ["ward/case-1", "ward/case-2", "ward/case-3"]
    assert rows["ward/case-1"]["n_used"] == "5" and 0 <= float(rows["ward/case-1"]["p_covid"]) <= 1
    assert rows["ward/case-2"]["n_used"] == "4" and rows["ward/case-2"]["p_covid"]  # scored without it
    assert rows["ward/case-3"]["p_covid"] == "" and "no CT image" in rows["ward/case-3"]["error"]
    slices = list(csv.DictReader(open(out, newline="")))
    assert any(r["error"] and r["study"] == "ward/case-2" for r in slices)
    written = out.read_text() + out.with_name("studies.csv").read_text() + result.output
    assert not any(secret in written for secret in SECRETS)  # nor the ID in the file names
    assert "[patient]" in out.read_text()

    kept = CliRunner().invoke(cli.main, ["predict", str(studies), "--studies", "--keep-identifiers", "--model",
                                         str(model), "--features-dir", str(root / "features"), "--out", str(out)])
    assert "--keep-identifiers" in kept.output and "PID98765" in out.read_text()
    assert "study_uid" in out.with_name("studies.csv").read_text().splitlines()[0]


@pytest.mark.slow
@pytest.mark.integration
@needs_shared(SHARED_STUDIES)
def test_the_shared_hospital_studies_decode_group_and_order():
    hu = slice_hu(str(SHARED_STUDIES / "COVID" / "P001" / "98C14734-ASSH_1.dcm"))  # JPEG Lossless
    assert hu.shape == (512, 512) and (hu.min(), hu.max()) == (-1024, 1490)
    assert float(hu.mean()) == pytest.approx(-562.34, abs=0.01)
    scan = find_studies(SHARED_STUDIES)
    assert [(s.name, len(s.slices)) for s in scan.studies] == [("CAP/cap001", 56), ("COVID/P001", 50),
                                                               ("Normal/normal001", 52)]
    labels = {row["path"]: int(row["instance_number"]) for row in csv.DictReader(open(SHARED_STUDIES / "slices.csv"))}
    for study in scan.studies:
        numbers = [labels[os.path.relpath(p, SHARED_STUDIES)] for p in study.slices]
        assert numbers == sorted(numbers) or numbers == sorted(numbers, reverse=True)  # along the body
        used, skipped = slices_to_score(study)
        assert 0 < len(skipped) < len(study.slices) // 3 and len(used) + len(skipped) == len(study.slices)
    assert "98C14734-ASSH" in scan.redact.values  # the header's patient ID, also in the file names


@pytest.mark.slow  # fits a model, runs the CLI
def test_evaluate_studies_against_study_labels(study_model, tmp_path):
    root, model = study_model
    studies = tmp_path / "archive"
    uids = {}
    for i in range(6):
        uids[i] = generate_uid()
        write_series(studies / f"case-{i}", uids[i], n=3, lungs=True)
    labels = tmp_path / "labels.csv"
    # by folder name, and one by StudyInstanceUID; one label matches nothing
    labels.write_text("study,label\n" + "".join(f"case-{i},{i % 2}\n" for i in range(5))
                      + f"{uids[5]},COVID\nnot-a-study,0\n")
    out = tmp_path / "report"
    result = CliRunner().invoke(cli.main, ["evaluate", "--studies", str(labels), "--data", str(studies), "--model",
                                           str(model), "--features-dir", str(root / "features"), "--report-dir",
                                           str(out), "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    assert "6 labeled studies (3 COVID)" in result.output and "1 labels match no study" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["level"] == "study" and metrics["n_studies"] == 6 and "roc_auc" in metrics["metrics"]
    written = "".join((out / f).read_text() for f in ("metrics.json", "studies.csv", "slices.csv"))
    assert not any(secret in written for secret in SECRETS) and uids[5] not in written


@pytest.mark.slow  # fits a model, runs the CLI
def test_report_shows_each_study_with_a_strip_of_its_top_slices(study_model, tmp_path):
    root, model = study_model
    studies = tmp_path / "archive"
    for i in range(2):
        write_series(studies / f"case-{i}", generate_uid(), n=4)
    out = tmp_path / "studies.html"
    result = CliRunner().invoke(cli.main, ["report", "--studies", "--data", str(studies), "--model", str(model),
                                           "--features-dir", str(root / "features"), "--out", str(out),
                                           "--explain-method", "gradcam"])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    assert "Research use only" in page and "case-0" in page and "case-1" in page
    assert page.count("<figure>") == 6 and page.count("data:image/jpeg;base64,") == 6  # 3 top slices each
    assert "http" not in page.replace("http-equiv", "") and not any(s in page for s in SECRETS)


def test_a_nifti_volume_is_a_study_and_its_hu_survive_the_round_trip(tmp_path):
    import nibabel as nib

    volume = np.stack([chest(lungs=2 <= k <= 5, seed=k) for k in range(8)], axis=-1)  # (64, 64, 8), HU
    volume = np.round(volume)
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([0.7, 0.7, 2.5, 1.0])), tmp_path / "vols" / "ct-9.nii.gz")
    (tmp_path / "vols" / "broken.nii").write_bytes(b"not a volume")
    scan = find_studies(tmp_path / "vols")
    (study,) = scan.studies
    assert study.kind == "nifti" and study.name == "ct-9" and len(study.slices) == 8
    assert "64x64x8" in study.series and "broken.nii" in next(iter(scan.unassigned))
    for k, path in enumerate(study.slices):  # HU back exactly, rows anterior first
        np.testing.assert_array_equal(slice_hu(path), np.flipud(volume[:, :, k].T))
    used, skipped = slices_to_score(study)
    assert [os.path.basename(p) for p in used] == [f"{k:05d}.dcm" for k in range(2, 6)]
    assert find_studies(tmp_path / "vols").studies[0].slices == study.slices  # written once, found again


def test_compressed_transfer_syntaxes_decode_to_the_same_hu(tmp_path):
    """What archives hold: RLE, JPEG 2000 and deflated written here; JPEG-LS and JPEG Lossless
    (the shared studies) need decoders that are installed by default."""
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        JPEG2000Lossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    plain = write_slice(tmp_path / "plain.dcm", generate_uid(), generate_uid(), 0)
    reference = slice_hu(str(plain))
    for syntax in (RLELossless, JPEG2000Lossless, DeflatedExplicitVRLittleEndian):
        ds = pydicom.dcmread(plain)
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = syntax
        else:
            ds.compress(syntax)
        path = tmp_path / f"{syntax.name[:12]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        assert path.read_bytes() != plain.read_bytes()
        np.testing.assert_array_equal(slice_hu(str(path)), reference)
    assert all(get_decoder(s).is_available for s in (JPEGLSLossless, JPEGLSNearLossless, JPEGLosslessSV1))
