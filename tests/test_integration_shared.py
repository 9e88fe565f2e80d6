"""Real data, real pretrained weights: a patient-level subset of COVID-CT from ../shared.

Skipped cleanly when ../shared (or $COVIDCT_SHARED) is absent.
"""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from covidct_core.run_context import RunContext
from feature_extractor.cache.feature_cache import FeatureCache
from feature_extractor.extract import FeatureExtractor
from feature_extractor.feature_spec import FeatureSpec
from feature_extractor.imaging.dataset import load_dataset
from tests.conftest import MOBILENET025_KERAS_FILE, MOBILENETV2_FILE, SHARED, SHARED_DATA, SHARED_MOSMED, needs_shared
from tests.helpers import non_ct_pictures

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]


def subset_manifest(path, every_train=3, every_test=2):
    """Every n-th patient of the official train+val and test splits: fewer images, still
    patient-level, so test patients are never seen in training."""
    ds = load_dataset(SHARED_DATA)
    chosen = []
    for splits, every in ((("train", "val"), every_train), (("test",), every_test)):
        patients = sorted({r.patient for r in ds.records if r.split in splits})
        keep = set(patients[::every])
        chosen += [r for r in ds.records if r.split in splits and r.patient in keep]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "split"])
        for r in chosen:
            writer.writerow([r.path, r.label, r.patient, r.split])
    return chosen


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def two_source_subsets(folder: Path) -> tuple[Path, Path, int, int]:
    """Manifests of a patient-level subset of each shared source (COVID-CT: every 6th patient,
    official split kept; MosMed: 40 studies of each class), with their source names."""
    covidct = subset_manifest(folder / "cct.csv", every_train=6, every_test=4)
    with open(folder / "cct.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    with open(folder / "cct.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([rows[0] + ["source"]] + [r + ["covid-ct"] for r in rows[1:]])
    with open(SHARED_MOSMED / "manifest.csv", newline="", encoding="utf-8") as fh:
        mosmed = list(csv.DictReader(fh))
    covid, noncovid = ([r for r in mosmed if (r["label"] == "COVID") == c] for c in (True, False))
    chosen = covid[::20][:40] + noncovid[::6][:40]
    with open(folder / "mosmed.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient", "source"])
        for r in chosen:
            writer.writerow([SHARED_MOSMED / r["path"], r["label"], r["patient"], "mosmed-slices"])
    return folder / "cct.csv", folder / "mosmed.csv", len(covidct), len(chosen)


@needs_shared(SHARED_DATA, SHARED_MOSMED, MOBILENETV2_FILE)
def test_two_sources_leave_one_out_and_the_ood_flag_with_pretrained_mobilenetv2(tmp_path):
    """extract -> fit on two sources -> evaluate --cv-by source -> predict with the OOD columns,
    on real slices of both shared sources and the real MobileNetV2 weights."""
    cct, mosmed, n_cct, n_mosmed = two_source_subsets(tmp_path)
    feats = tmp_path / "features"
    weights = f"mobilenetv2={MOBILENETV2_FILE}"
    ex = run("extract", "-b", "mobilenetv2", "--weights", weights, "--data", cct, "--data", mosmed,
             "--features-dir", feats)
    assert ex.exit_code == 0, ex.output
    assert f"covid-ct: {n_cct}, mosmed-slices: {n_mosmed}" in ex.output

    model = tmp_path / "both.joblib"
    fit = run("fit", "--clf", "logreg", "--data", cct, "--data", mosmed, "--features-dir", feats,
              "--model", model, "--harmonize", "standardize")
    assert fit.exit_code == 0, fit.output
    assert "source-balanced weights" in fit.output and f"source mosmed-slices: {n_mosmed} images" in fit.output

    loso = run("evaluate", "--model", model, "--cv-by", "source", "--data", cct, "--data", mosmed,
               "--features-dir", feats, "--report-dir", tmp_path / "loso", "--bootstrap", "200")
    assert loso.exit_code == 0, loso.output
    held = {h["held_out"]: h for h in json.loads((tmp_path / "loso" / "metrics.json").read_text())["cv_by_source"]}
    assert held["covid-ct"]["n"]["images"] == n_cct and held["covid-ct"]["trained_on"] == ["mosmed-slices"]
    assert held["mosmed-slices"]["n"]["images"] == n_mosmed and held["mosmed-slices"]["trained_on"] == ["covid-ct"]
    for h in held.values():  # real numbers, whatever they are: this is not a threshold on skill
        assert 0 <= h["roc_auc"]["ci_low"] <= h["roc_auc"]["value"] <= h["roc_auc"]["ci_high"] <= 1

    scans = tmp_path / "scans"
    scans.mkdir()
    test_slices = [row[0] for row in list(csv.reader(open(cct, newline="")))[1:] if row[3] == "test"][:25]
    for i, path in enumerate(test_slices):
        shutil.copy(path, scans / f"ct{i:02d}.png")
    pictures = non_ct_pictures(scans / "not-ct", 12)
    out = tmp_path / "pred.csv"
    pred = run("predict", scans, "--model", model, "--out", out, "--features-dir", feats, "--site", "covid-ct")
    assert pred.exit_code == 0, pred.output
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out, newline=""))}
    flags = {name: r["in_distribution"] for name, r in rows.items()}
    assert all(flags[p.name] == "false" for p in pictures), flags  # every non-CT picture
    assert all(rows[p.name]["answer"] == "not assessable" for p in pictures)  # never COVID, never NonCOVID
    ct_flagged = sum(flags[f"ct{i:02d}.png"] == "false" for i in range(len(test_slices)))
    assert ct_flagged <= 2, flags  # held-out patients of a training source: about 1% expected
    assert f"{ct_flagged + len(pictures)} of {len(rows)} images look unlike the model's training images" in pred.output


@needs_shared(SHARED_DATA, MOBILENETV2_FILE)
def test_pretrained_mobilenetv2_end_to_end(tmp_path):
    manifest = tmp_path / "subset.csv"
    chosen = subset_manifest(manifest)
    n_train = sum(r.split in ("train", "val") for r in chosen)
    n_test = len(chosen) - n_train
    feats = tmp_path / "features"
    weights = f"mobilenetv2={MOBILENETV2_FILE}"

    first = run("extract", "-b", "mobilenetv2", "--weights", weights, "--data", manifest, "--features-dir", feats)
    assert first.exit_code == 0, first.output
    assert f"0 cached, {len(chosen)} new" in first.output
    again = run("extract", "-b", "mobilenetv2", "--weights", weights, "--data", manifest, "--features-dir", feats)
    assert f"{len(chosen)} cached, 0 new" in again.output
    # ... and a fully cached extract in a fresh process never imports TensorFlow.
    probe = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], "
             "run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TF_LOADED', 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe, str(REPO / "cli.py"), "extract", "-b", "mobilenetv2",
                           "--weights", weights, "--data", str(manifest), "--features-dir", str(feats)],
                          capture_output=True, text=True, timeout=120)
    assert "cached, 0 new" in proc.stdout and "TF_LOADED False" in proc.stdout, proc.stdout + proc.stderr

    model = tmp_path / "models" / "svm.joblib"
    fit = run("fit", "--clf", "svm", "--data", manifest, "--features-dir", feats, "--model", model)
    assert fit.exit_code == 0, fit.output
    assert f"on {n_train} images" in fit.output

    ev = run("evaluate", "--model", model, "--data", manifest, "--features-dir", feats)
    assert ev.exit_code == 0, ev.output
    assert f"split=test (n={n_test}:" in ev.output  # exactly the held-out patients' images
    metrics = dict(line.split()[:2] for line in ev.output.splitlines()
                   if line.split() and line.split()[0] in ("accuracy", "roc_auc"))
    # Held-out patients, real features: clearly better than chance (full data gives ~0.85 AUC).
    assert float(metrics["roc_auc"]) > 0.70 and float(metrics["accuracy"]) > 0.60, ev.output

    scans = tmp_path / "scans"
    scans.mkdir()
    test_images = [r for r in chosen if r.split == "test"][:6]
    for i, r in enumerate(test_images):
        shutil.copy(r.path, scans / f"scan {i}%.png")  # new names: found in the cache by content
    out = tmp_path / "pred.csv"
    pred = run("predict", scans, "--model", model, "--out", out, "--features-dir", feats,
               "--explain", "--explain-dir", tmp_path / "heatmaps")
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader(open(out, newline="")))
    assert len(rows) == len(test_images) and not any(r["error"] for r in rows)
    assert all(0.0 <= float(r["p_covid"]) <= 1.0 for r in rows)
    # one heatmap per slice, from the real pretrained backbone
    assert sorted(Path(r["heatmap"]).name for r in rows) == sorted(p.name for p in (tmp_path / "heatmaps").iterdir())


@needs_shared(SHARED_DATA, MOBILENET025_KERAS_FILE)
def test_imagenet_weights_found_offline_in_keras_home(tmp_path, monkeypatch):
    """weights=imagenet with KERAS_HOME pointing at the shared keras folder: keras' own
    unmodified file is used offline, and equals passing the same file explicitly."""
    monkeypatch.setenv("KERAS_HOME", str(SHARED / "keras"))
    records = load_dataset(SHARED_DATA).records[:4]
    context = RunContext(tmp_path / "f", batch_size=4, offline=True)
    via_cache, via_file, random = (FeatureExtractor(FeatureSpec("mobilenet025", weights), context)
                                   for weights in ("imagenet", str(MOBILENET025_KERAS_FILE), "none"))
    reports = [e.extract(records) for e in (via_cache, via_file, random)]
    assert via_cache.weights.sha256 == via_file.weights.sha256
    keys = [r.key for r in reports[0].records]
    a, b, c = (FeatureCache(r.cache_path).read(keys) for r in reports)
    assert a.shape == (4, 256)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, c, atol=1e-3)  # pretrained features are not random-init ones
