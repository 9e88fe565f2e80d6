"""What a radiology department opens: the DICOM SEG (valid, read back by highdicom, the same voxels as the
PNG maps and the NIfTI), slice numbers a PACS shows, right and left from ImageOrientationPatient, and a
series with a gap placed slice by slice (a tilted one refused with one line)."""
import csv
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from PIL import Image
from pydicom.uid import generate_uid

import cli
from tests.helpers import lesion_slice, write_series


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def lung_windowed_series(folder, n=4, mirrored=False, step=2.5, skip=()):
    """A DICOM series of the synthetic lesion slices (lung-windowed grey back to HU), supine head first; or
    its mirror: the pixels flipped left to right and the rows' direction reversed in the header, the same
    patient seen the other way."""
    study, series = generate_uid(), generate_uid()
    paths = write_series(folder, study, series, n=n, z0=-100.0, step=step)
    kept = []
    for i, path in enumerate(paths):
        if i in skip:
            path.unlink()
            continue
        ds = pydicom.dcmread(path)
        grey, _, _ = lesion_slice(10 + i, True, 64)
        hu = grey.astype(np.float32) / 255 * 1500 - 1350
        if mirrored:
            hu = hu[:, ::-1]
            ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [0.8 * 63, 0.0, float(ds.ImagePositionPatient[2])]
        ds.Rows, ds.Columns = hu.shape
        ds.PixelData = np.clip(hu + 1024, 0, 4095).astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        kept.append(path)
    return kept


@pytest.mark.slow
def test_a_mirrored_series_gets_the_same_right_and_left(trained_network, tmp_path):
    from classifiers.workflows.lesions.maps import LesionMapper
    from covidct_core.run_context import RunContext
    from feature_extractor.feature_spec import FeatureSpec

    fit, settings, _ = trained_network
    mapper = LesionMapper(fit.segmenter, FeatureSpec.from_record(fit.record["maps"]), settings,
                          RunContext(tmp_path / "f"))
    supine = [mapper.segment(p).summary for p in lung_windowed_series(tmp_path / "supine")]
    mirrored = [mapper.segment(p).summary for p in lung_windowed_series(tmp_path / "mirrored", mirrored=True)]
    for a, b in zip(supine, mirrored):
        assert a.lung_right_share_of_slice == pytest.approx(b.lung_right_share_of_slice, abs=0.01)
        assert a.lung_left_share_of_slice == pytest.approx(b.lung_left_share_of_slice, abs=0.01)
        assert a.lesion_share_right_lung == pytest.approx(b.lesion_share_right_lung, abs=0.05)
        assert a.lesion_share_left_lung == pytest.approx(b.lesion_share_left_lung, abs=0.05)
    shares = [(s.lesion_share_right_lung, s.lesion_share_left_lung) for s in supine]
    assert any(abs(r - left) > 0.02 for r, left in shares)  # the sides differ: swapping them would show


@pytest.fixture(scope="module")
def study_outputs(lesion_model, tmp_path_factory):
    root, _, _, model = lesion_model
    tmp = tmp_path_factory.mktemp("radiology")
    paths = lung_windowed_series(tmp / "archive" / "case-1", n=5, skip=(2,))  # a slice missing in the middle
    out, maps = tmp / "out" / "slices.csv", tmp / "maps"
    result = run("predict", tmp / "archive", "--studies", "--model", model, "--features-dir", root / "features",
                 "--out", out, "--lesion-maps", maps, "--seg")
    assert result.exit_code == 0, result.output
    return paths, out, maps


@pytest.mark.slow
def test_the_seg_and_the_nifti_agree_voxel_for_voxel_with_the_png_maps(study_outputs):
    import highdicom as hd
    import nibabel as nib

    paths, out, maps = study_outputs
    (seg_path,) = maps.glob("*.seg.dcm")
    seg = hd.seg.segread(seg_path)
    assert [d.segment_label for d in seg.SegmentSequence] == ["Right lung", "Left lung", "Lesion"]
    assert seg.SegmentSequence[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "52988006"  # SNOMED CT: lesion
    sources = [pydicom.dcmread(p) for p in paths]
    referenced = {ref.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence
                  for ref in item.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in sources}
    assert seg.SOPInstanceUID not in {ds.SOPInstanceUID for ds in sources} and seg.PatientID == sources[0].PatientID
    volume = nib.load(str(next(maps.glob("*.nii.gz"))))
    labels = np.asarray(volume.dataobj).transpose(1, 0, 2)
    assert labels.shape[2] == 5 and not labels[..., 2].any()  # the missing slice stays empty at its own place
    assert "1 slices missing" in volume.header["descrip"].tobytes().decode()
    rows = {int(r["instance_number"]): r for r in csv.DictReader(open(out))}
    for k, ds in zip((0, 1, 3, 4), sources):
        number = int(ds.InstanceNumber)
        lesion = np.asarray(Image.open(maps / "case-1" / f"{number:04d}_lesion.png")) > 0
        lungs = np.asarray(Image.open(maps / "case-1" / f"{number:04d}_lungs.png"))
        assert ((labels[..., k] >= 3) == lesion).all() and ((labels[..., k] > 0) == (lungs > 0)).all()
        frame = seg.get_pixels_by_source_instance([ds.SOPInstanceUID])[0]
        assert (frame[..., 2].astype(bool) == lesion).all() and (frame[..., :2].any(-1) == (lungs > 0)).all()
        assert float(rows[number]["slice_z_mm"]) == pytest.approx(float(ds.ImagePositionPatient[2]))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian's dicom3tools) is not installed")
def test_dciodvfy_finds_no_error_in_the_seg(study_outputs):
    _, _, maps = study_outputs
    (seg_path,) = maps.glob("*.seg.dcm")
    checked = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True)
    errors = [line for line in (checked.stdout + checked.stderr).splitlines() if line.startswith("Error")]
    assert errors == []


@pytest.mark.slow
def test_a_tilted_series_gets_no_volume_outputs_and_one_line_why(lesion_model, tmp_path):
    root, _, _, model = lesion_model
    paths = lung_windowed_series(tmp_path / "archive" / "tilted", n=4)
    for i, path in enumerate(paths):  # the gantry tilted: each slice shifted forwards as z grows
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [0.0, 3.0 * i, float(ds.ImagePositionPatient[2])]
        ds.save_as(path, enforce_file_format=True)
    maps = tmp_path / "maps"
    result = run("predict", tmp_path / "archive", "--studies", "--model", model, "--features-dir", root / "features",
                 "--out", tmp_path / "s.csv", "--lesion-maps", maps, "--seg")
    assert result.exit_code == 0, result.output
    assert not list(maps.glob("*.nii.gz")) and not list(maps.glob("*.seg.dcm"))
    assert result.output.count("no label volume or DICOM SEG: its slices do not lie along their normal") == 1
