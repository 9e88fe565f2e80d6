"""The command line with two sources: fit and evaluate across them, leave one source out, a
harmonized fit adapted to a site, calibrate on a site's sample."""
import csv
import json

import pytest
from click.testing import CliRunner

import cli
from tests.helpers import ct_like


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])

@pytest.fixture(scope="module")
def two_sources(workspace, tmp_path_factory):
    """The workspace's COVID-CT replica plus a second hospital (class folders, no split),
    both extracted into one cache."""
    from tests.helpers import make_class_folders

    root, data, _ = workspace
    other = make_class_folders(tmp_path_factory.mktemp("sites") / "hospital-b", n_per_class=6, seed=3)
    result = run("extract", "-b", "mobilenetv2", "--weights", "none", "--data", data, "--data", other,
                 "--features-dir", root / "features", "--batch-size", "16")
    assert result.exit_code == 0, result.output
    assert "60 images" in result.output and "covid-ct: 48, hospital-b: 12" in result.output
    return root, data, other


@pytest.fixture(scope="module")
def two_source_model(two_sources, tmp_path_factory):
    """A logistic regression fitted once on both sources (default: source balance)."""
    root, data, other = two_sources
    model = tmp_path_factory.mktemp("two") / "two.joblib"
    fit = run("fit", "--clf", "logreg", "--data", data, "--data", other, "--features-dir", root / "features",
              "--model", model, "--cv-folds", "3")
    assert fit.exit_code == 0, fit.output
    return model, fit.output


def test_fit_and_evaluate_on_two_sources(two_sources, two_source_model, tmp_path):
    root, data, other = two_sources
    model, fit_output = two_source_model
    assert "source-balanced weights" in fit_output and "source hospital-b: 12 images" in fit_output
    manifest = json.loads(model.with_suffix(".json").read_text())
    assert manifest["balance"] == "source"
    training = manifest["training"]
    assert training["n_images"] == 36 + 12  # COVID-CT's train+val, and all of the split-less source
    assert [(s["name"], s["n_images"], s["n_covid"]) for s in training["sources"]] == [
        ("covid-ct", 36, 18), ("hospital-b", 12, 6)]
    assert all(len(s["fingerprint"]) == 64 for s in training["sources"])
    # the second source was all training data: evaluating on it is refused, naming it
    refused = run("evaluate", "--model", model, "--data", other, "--features-dir", root / "features")
    assert refused.exit_code == 1 and "hospital-b: exactly the images the model was trained on" in refused.output
    # a third source is held out: metrics per source
    from tests.helpers import make_class_folders

    third = make_class_folders(tmp_path / "hospital-c", n_per_class=4, seed=9)
    ev = run("evaluate", "--model", model, "--data", data, "--data", third, "--features-dir", root / "features",
             "--report-dir", tmp_path / "r", "--bootstrap", "200")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["split"] == "test+all" and metrics["n"]["images"] == 12 + 8
    assert set(metrics["by_source"]) == {"covid-ct", "hospital-c"}
    assert metrics["by_source"]["hospital-c"]["n"] == {"images": 8, "COVID": 4, "NonCOVID": 4}
    assert "source hospital-c (n=8)" in ev.output


def test_bad_sources_are_one_line_errors_and_nothing_is_written(two_sources, tmp_path):
    root, data, other = two_sources
    one_class = tmp_path / "only-covid"
    (one_class / "COVID").mkdir(parents=True)
    (one_class / "NonCOVID").mkdir()
    for image in (other / "COVID").iterdir():
        (one_class / "COVID" / image.name).write_bytes(image.read_bytes())
    model = tmp_path / "m.joblib"
    for args, message in [((data, data), "given twice"), ((data, one_class), "one class only")]:
        result = run("fit", "--clf", "logreg", *[a for d in args for a in ("--data", d)],
                     "--features-dir", root / "features", "--model", model, "--cv-folds", "3")
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
        assert not model.exists()


def test_evaluate_leave_one_source_out(two_sources, two_source_model, tmp_path):
    """evaluate --cv-by source refits the model's configuration without each source and
    scores that source: no choice sees the held-out source's labels."""
    root, data, other = two_sources
    model, _ = two_source_model
    out = tmp_path / "loso"
    ev = run("evaluate", "--model", model, "--cv-by", "source", "--data", data, "--data", other,
             "--features-dir", root / "features", "--report-dir", out, "--bootstrap", "200")
    assert ev.exit_code == 0, ev.output
    assert "leave-one-source-out" in ev.output and "1 plot in" in ev.output
    results = {h["held_out"]: h for h in json.loads((out / "metrics.json").read_text())["cv_by_source"]}
    assert set(results) == {"covid-ct", "hospital-b"}
    # held-out COVID-CT: every labeled image of it (48), trained on the other source's 12
    assert results["covid-ct"]["n"]["images"] == 48 and results["covid-ct"]["n_train"] == 12
    # held-out hospital-b: its 12, trained on COVID-CT's train+val only (36), never its test split
    assert results["hospital-b"]["n"]["images"] == 12 and results["hospital-b"]["n_train"] == 36
    for h in results.values():
        assert h["roc_auc"]["ci_low"] <= h["roc_auc"]["value"] <= h["roc_auc"]["ci_high"]
    assert "| hospital-b | 12 | covid-ct (36) |" in (out / "report.md").read_text()
    assert (out / "roc_by_source.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    one = run("evaluate", "--model", model, "--cv-by", "source", "--data", data, "--features-dir", root / "features")
    assert one.exit_code == 1 and "two or more sources" in one.output


def test_report_leave_one_source_out(two_sources, two_source_model, tmp_path):
    root, data, other = two_sources
    model, _ = two_source_model
    out = tmp_path / "loso.html"
    result = run("report", "--model", model, "--cv-by", "source", "--data", data, "--data", other,
                 "--features-dir", root / "features", "--out", out, "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    assert "60 images" in result.output and "0 heatmaps" in result.output
    page = out.read_text(encoding="utf-8")
    assert "Leave one source out" in page and "held out: hospital-b" in page and "held out: covid-ct" in page
    assert "alt='roc by held-out source'" in page and "Research use only" in page


@pytest.mark.slow
def test_harmonized_fit_adapts_to_a_site_and_predict_flags_what_is_unlike_training(two_sources, tmp_path):
    """fit --harmonize standardize --adapt-to: the new site's statistics are learned from its
    unlabeled images and recorded; predict uses them, writes the OOD columns, and refuses a
    batch too small to standardize by."""
    from tests.helpers import make_class_folders

    root, data, _ = two_sources
    other = make_class_folders(tmp_path / "hospital-b", n_per_class=10, seed=23)
    assert run("extract", "-b", "mobilenetv2", "--weights", "none", "--data", other,
               "--features-dir", root / "features").exit_code == 0
    site = make_class_folders(tmp_path / "hospital-c", n_per_class=11, seed=21)  # 22 unlabeled images
    model = tmp_path / "h.joblib"
    small = run("fit", "--clf", "logreg", "--data", data, "--data", two_sources[2], "--features-dir",
                root / "features", "--model", model, "--cv-folds", "3", "--harmonize", "standardize")
    assert small.exit_code == 1 and "site 'hospital-b' has 12 readable images" in small.output
    fit = run("fit", "--clf", "logreg", "--data", data, "--data", other, "--features-dir", root / "features",
              "--model", model, "--cv-folds", "3", "--harmonize", "standardize", "--adapt-to", site)
    assert fit.exit_code == 0, fit.output
    manifest = json.loads(model.with_suffix(".json").read_text())
    assert manifest["fit"]["harmonize"] == "standardize"
    assert [(s["name"], s["role"], s["n_images"]) for s in manifest["harmonization"]["sites"]] == [
        ("covid-ct", "training", 36), ("hospital-b", "training", 20), ("hospital-c", "adapt-to", 22)]
    assert manifest["ood"]["cut_off_rule"].startswith("99% quantile of out-of-fold scores")

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        ct_like(40 + i, i % 2 == 0).save(scans / f"s{i}.png")
    out = tmp_path / "pred.csv"
    result = run("predict", scans, "--model", model, "--out", out, "--features-dir", root / "features")
    assert result.exit_code == 0, result.output
    assert "site hospital-c: standardized by the model's statistics of hospital-c (22 images)" in result.output
    assert "of 3 images look unlike the model's training images" in result.output
    rows = list(csv.DictReader(open(out, newline="")))
    assert list(rows[0]) == ["path", "answer", "p_covid", "label", "ood_score", "in_distribution", "lesion_fraction",
                             "lung_fraction", "error"]
    assert all(r["in_distribution"] in ("true", "false") and float(r["ood_score"]) >= 0 for r in rows)
    for args, message in [(["--site", "batch"], "3 readable images; standardizing its features needs at least 20"),
                          (["--site", "mars"],
                           "no statistics of site 'mars'; known: covid-ct, hospital-b, hospital-c")]:
        refused = run("predict", scans, "--model", model, "--out", tmp_path / "x.csv", "--features-dir",
                      root / "features", *args)
        assert refused.exit_code == 1 and message in refused.output and "Traceback" not in refused.output
        assert not (tmp_path / "x.csv").exists()
    loso = run("evaluate", "--model", model, "--cv-by", "source", "--data", data, "--data", other,
               "--features-dir", root / "features", "--report-dir", tmp_path / "loso", "--bootstrap", "200")
    assert loso.exit_code == 0 and "harmonize standardize" in loso.output
    local = tmp_path / "calibrated.joblib"
    cal = run("calibrate", "--model", model, "--data", site, "--out", local, "--features-dir", root / "features")
    assert cal.exit_code == 0, cal.output
    sites = json.loads(local.with_suffix(".json").read_text())["harmonization"]["sites"]
    assert [(s["name"], s["role"]) for s in sites][-1] == ("hospital-c", "calibrate")
    again = run("predict", scans, "--model", local, "--out", tmp_path / "c.csv", "--features-dir", root / "features")
    assert again.exit_code == 0 and "site hospital-c: standardized by the model's statistics" in again.output
    no_site = run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features",
                  "--model", tmp_path / "n.joblib", "--adapt-to", site)
    assert no_site.exit_code == 1 and "--adapt-to needs" in no_site.output


def test_calibrate_refits_probabilities_and_threshold_on_a_local_sample(two_sources, two_source_model, tmp_path):
    from tests.helpers import make_class_folders

    root, data, _ = two_sources
    model, _ = two_source_model
    local = make_class_folders(tmp_path / "hospital-d", n_per_class=5, seed=31)
    out = tmp_path / "local.joblib"
    result = run("calibrate", "--model", model, "--data", local, "--out", out, "--features-dir", root / "features")
    assert result.exit_code == 0, result.output
    assert "recalibrated two.joblib on 10 labeled images of hospital-d (5 COVID, 5 NonCOVID)" in result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    original = json.loads(model.with_suffix(".json").read_text())
    c = manifest["calibration"]
    assert c["site"] == "hospital-d" and c["from_model_sha256"] == original["model_sha256"]
    assert manifest["threshold"] == 0.5 and manifest["threshold_choice"]["rule"].startswith("the sample's COVID share")
    assert manifest["model_sha256"] != original["model_sha256"] and manifest["backbones"] == original["backbones"]
    pred = run("predict", local, "--model", out, "--out", tmp_path / "p.csv", "--features-dir", root / "features")
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert len(rows) == 10 and all(0 <= float(r["p_covid"]) <= 1 for r in rows)
    one_class = tmp_path / "few"
    make_class_folders(one_class, n_per_class=1, seed=5)
    refused = run("calibrate", "--model", model, "--data", one_class, "--out", tmp_path / "f.joblib",
                  "--features-dir", root / "features")
    assert refused.exit_code == 1 and "at least 2 images of each class" in refused.output
    assert not (tmp_path / "f.joblib").exists()


@pytest.mark.slow
def test_calibrate_refits_the_conformal_answers_on_the_sites_sample(two_sources, two_source_model, tmp_path):
    """With enough labeled images of the site, the answers' calibration is the site's own: its
    out-of-fold recalibrated scores; with too few, the model's own is kept and the card says so."""
    from tests.helpers import make_class_folders

    root, data, _ = two_sources
    model, _ = two_source_model
    local = make_class_folders(tmp_path / "hospital-e", n_per_class=12, seed=41)
    out = tmp_path / "site.joblib"
    result = run("calibrate", "--model", model, "--data", local, "--out", out, "--features-dir", root / "features")
    assert result.exit_code == 0, result.output
    assert "conformal answers refit on the site's sample (12 COVID, 12 NonCOVID" in result.output
    conformal = json.loads(out.with_suffix(".json").read_text())["conformal"]
    assert conformal["slices"]["n_calibration"] == {"NonCOVID": 12, "COVID": 12}
    assert conformal["calibration_data"].startswith("the site's labeled sample")
    original = json.loads(model.with_suffix(".json").read_text())["conformal"]["slices"]["n_calibration"]
    small = make_class_folders(tmp_path / "hospital-f", n_per_class=5, seed=43)
    kept = run("calibrate", "--model", model, "--data", small, "--out", tmp_path / "small.joblib",
               "--features-dir", root / "features")
    assert kept.exit_code == 0, kept.output
    slices = json.loads((tmp_path / "small.json").read_text())["conformal"]["slices"]
    assert slices["n_calibration"] == original and slices["kept"].startswith("from the model's training data")
