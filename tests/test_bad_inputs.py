"""Messy hospital folders: every bad file gets its own row and reason, the rest go through."""
import csv
import io
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from feature_extractor.imaging.decode import ImageDecodeError, decode_image
from tests.helpers import ct_like, decompression_bomb_png, make_dicom


@pytest.fixture
def model(logreg_model):
    return logreg_model


def predict(model, folder, out):
    root, path = model
    return CliRunner().invoke(cli.main, ["predict", str(folder), "--model", str(path), "--out", str(out),
                                         "--features-dir", str(root / "features")])


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


BAD = {  # file name -> (how to make it, words the reason must contain)
    "zero.png": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.png": (lambda p: p.write_bytes(png_bytes(ct_like(9, True))[:300]), "truncated or corrupt"),
    "random.png": (lambda p: p.write_bytes(os.urandom(4096)), "not a recognised image format"),
    "notes.jpg": (lambda p: p.write_text("patient list, not an image\n"), "not a recognised image format"),
    "bomb.png": (decompression_bomb_png, "decompression bomb"),
    "tiny.png": (lambda p: Image.new("L", (1, 1)).save(p), "too small"),
    "broken-link.png": (lambda p: os.symlink(p.parent / "does-not-exist.png", p), "cannot read file"),
    "no-pixels.dcm": (lambda p: make_dicom(p, None), "no pixel data"),
}


def test_folder_with_good_and_bad_files(model, tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub dir").mkdir(parents=True)
    ct_like(1, True).save(folder / "good.png")
    ct_like(2, False).save(folder / "sub dir" / "scan 50% final.jpg")  # spaces and '%'
    odd = os.fsdecode(b"caf\xe9-scan.png")  # not UTF-8
    ct_like(3, True).save(os.path.join(os.fsencode(folder), os.fsencode(odd)))
    for name, (make, _) in BAD.items():
        make(folder / name)
    os.symlink(folder, folder / "sub dir" / "loop")  # a symlink loop: not followed

    out = tmp_path / "pred.csv"
    result = predict(model, folder, out)
    assert result.exit_code == 3, result.output  # documented: done, some files unreadable
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out, newline="", encoding="utf-8"))}
    assert len(rows) == 3 + len(BAD)
    good = [r for r in rows.values() if not r["error"]]
    assert len(good) == 3 and all(0 <= float(r["p_covid"]) <= 1 for r in good)
    assert "caf\\xe9-scan.png" in rows and "scan 50% final.jpg" in rows
    for name, (_, reason) in BAD.items():
        assert reason in rows[name]["error"], (name, rows[name])
        assert rows[name]["p_covid"] == "" and rows[name]["label"] == ""


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_by_permissions(model, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    ct_like(1, True).save(folder / "good.png")
    ct_like(2, True).save(folder / "locked.png")
    os.chmod(folder / "locked.png", 0)
    out = tmp_path / "pred.csv"
    assert predict(model, folder, out).exit_code == 3
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(open(out, newline=""))}
    assert "Permission denied" in rows["locked.png"]["error"]


@pytest.mark.parametrize("content", [None, "notes.txt"])
def test_empty_or_imageless_folder_is_one_clear_error(model, tmp_path, content):
    folder = tmp_path / "empty"
    folder.mkdir()
    if content:
        (folder / content).write_text("no images here")
    result = predict(model, folder, tmp_path / "p.csv")
    assert result.exit_code == 1 and "no image files" in result.output
    assert "Traceback" not in result.output


def test_good_dicom_is_windowed_to_lungs(model, tmp_path):
    hu = np.full((64, 64), -1000.0)  # air
    hu[16:48, 16:48] = -600.0        # lung level: mid grey in the lung window
    hu[:, :4] = 400.0                # bone: white
    path = make_dicom(tmp_path / "slice.dcm", hu)
    arr = decode_image(path.read_bytes())[..., 0]
    # window -600 +- 750: lung level maps to mid grey, bone above 150 HU to white, air (-1000) to 60
    assert arr[32, 32] == 128 and arr[0, 0] == 255 and arr[0, 10] == round(350 / 1500 * 255)
    # custom window: level -1000 width 200 makes air mid grey
    assert decode_image(path.read_bytes(), window=(-1000, 200))[0, 10, 0] == 128
    # three windows (lung / mediastinal / wide) are the three channels
    lung, mediastinal, wide = decode_image(path.read_bytes(), window=(-600, 1500, 40, 400, -500, 2000))[32, 32]
    assert (lung, mediastinal, wide) == (128, 0, round(0.45 * 255))
    # MONOCHROME1 is inverted
    inv = make_dicom(tmp_path / "inv.dcm", hu, photometric="MONOCHROME1")
    assert decode_image(inv.read_bytes())[0, 0, 0] == 0  # bone is black in MONOCHROME1
    out = tmp_path / "p.csv"
    assert predict(model, tmp_path, out).exit_code == 0
    (row,) = [r for r in csv.DictReader(open(out)) if r["path"].endswith("slice.dcm")]
    assert row["p_covid"] and not row["error"]


def test_sixteen_bit_tiff_goes_through(tmp_path):
    values = (np.arange(64 * 64).reshape(64, 64) * 7).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "scan.tif")
    arr = decode_image((tmp_path / "scan.tif").read_bytes(), (32, 32))
    assert arr.shape == (32, 32, 3) and arr.max() > 200 and arr.min() < 10


def test_dicom_named_dcm_without_preamble_error_is_specific():
    with pytest.raises(ImageDecodeError, match="DICOM"):
        decode_image(b"\x00" * 64, dicom_hint=True)


def test_model_refuses_other_weights(model, tmp_path):
    """Features from weights other than the training ones are refused, by SHA-256."""
    import keras

    keras.utils.set_random_seed(1)
    other = keras.applications.MobileNetV2(include_top=False, weights=None, pooling="avg")
    weights_file = tmp_path / "other.weights.h5"
    other.save_weights(weights_file)
    ct_like(1, True).save(tmp_path / "a.png")
    root, path = model
    result = CliRunner().invoke(cli.main, ["predict", str(tmp_path), "--model", str(path), "--features-dir",
                                           str(root / "features"), "--weights", f"mobilenetv2={weights_file}"])
    assert result.exit_code == 1 and "SHA-256" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", sorted(BAD))
def test_each_bad_kind_has_its_own_reason(tmp_path, name):
    """One case per test, through the same read-and-decode steps extract uses."""
    from pathlib import Path

    from feature_extractor.imaging.dataset import DICOM_SUFFIXES, load_unlabeled, with_keys

    make, reason = BAD[name]
    make(tmp_path / name)
    ct_like(0, True).save(tmp_path / "good.png")
    records = {Path(r.path).name: r for r in with_keys(load_unlabeled(tmp_path).records)}
    rec = records[name]
    if rec.error:  # unreadable before decoding
        message = rec.error
    else:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(Path(rec.path).read_bytes(), (32, 32),
                         dicom_hint=Path(rec.path).suffix in DICOM_SUFFIXES)
        message = str(info.value)
    assert reason in message
    assert not records["good.png"].error
