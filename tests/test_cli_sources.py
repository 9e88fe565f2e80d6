"""The command line with two sources: fit and evaluate across them, leave one source out, a
harmonized fit adapted to a site, calibrate on a site's sample."""
import csv
import json

import pytest
from PIL import Image
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
    assert list(rows[0]) == ["path", "answer", "finding", "answer_note", "p_covid", "label", "ood_score",
                             "in_distribution", "lesion_fraction", "lung_share_of_slice", "lesion_area_mm2",
                             "error"]
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


def inverted_site(folder, n_per_class, seed):
    """A site whose scanner shows the slices inverted: labeled class folders unlike every training source."""
    from PIL import ImageOps

    from tests.helpers import make_class_folders

    make_class_folders(folder, n_per_class=n_per_class, seed=seed)
    for path in folder.rglob("*.*g"):
        ImageOps.invert(Image.open(path).convert("L")).save(path)
    return folder


def test_calibrate_only_recalibrates_with_sigmoid(two_sources, two_source_model, tmp_path):
    from tests.helpers import make_class_folders

    root, data, _ = two_sources
    model, _ = two_source_model
    local = make_class_folders(tmp_path / "hospital-d", n_per_class=5, seed=31)
    out = tmp_path / "local.joblib"
    result = run("calibrate", "--model", model, "--data", local, "--out", out, "--method", "sigmoid",
                 "--features-dir", root / "features")
    assert result.exit_code == 0, result.output
    assert "taught two.joblib the site hospital-d from 10 labeled images" in result.output
    manifest = json.loads(out.with_suffix(".json").read_text())
    original = json.loads(model.with_suffix(".json").read_text())
    c = manifest["calibration"]
    assert c["site"] == "hospital-d" and c["from_model_sha256"] == original["model_sha256"]
    assert c["method"].startswith("CalibratedClassifierCV(sigmoid)")
    assert manifest["threshold"] == 0.5 and manifest["threshold_choice"]["rule"].startswith("the sample's COVID share")
    assert manifest["model_sha256"] != original["model_sha256"] and manifest["backbones"] == original["backbones"]
    assert "hospital-d" in manifest["answers"]["source_test"]["sources"]
    pred = run("predict", local, "--model", out, "--out", tmp_path / "p.csv", "--features-dir", root / "features")
    assert pred.exit_code == 0, pred.output
    rows = list(csv.DictReader(open(tmp_path / "p.csv", newline="")))
    assert len(rows) == 10 and all(0 <= float(r["p_covid"]) <= 1 for r in rows)
    one_class = tmp_path / "few"
    make_class_folders(one_class, n_per_class=1, seed=5)
    refused = run("calibrate", "--model", model, "--data", one_class, "--out", tmp_path / "f.joblib",
                  "--features-dir", root / "features")
    assert refused.exit_code == 1 and "from at least 5 patients each" in refused.output
    assert not (tmp_path / "f.joblib").exists()


@pytest.mark.slow
def test_after_calibrate_learns_a_site_its_sets_are_assessable(two_sources, two_source_model, tmp_path):
    """A site unlike every training source is not assessable as a set; calibrate learns it from its
    labeled sample (the site model, its thresholds, a known source), and its new sets are answered."""
    root, data, _ = two_sources
    model, _ = two_source_model
    labeled = inverted_site(tmp_path / "hospital-e", 12, 41)
    scans = inverted_site(tmp_path / "new-scans", 8, 43)
    common = ["--features-dir", root / "features"]
    before = run("predict", scans, "--model", model, "--out", tmp_path / "before.csv", *common)
    assert before.exit_code == 0, before.output
    rows = list(csv.DictReader(open(tmp_path / "before.csv", newline="")))
    assert {r["answer"] for r in rows} == {"not assessable"} and "unlike every source" in rows[0]["answer_note"]
    out = tmp_path / "site.joblib"
    result = run("calibrate", "--model", model, "--data", labeled, "--out", out, *common)
    assert result.exit_code == 0, result.output
    assert "site model" in result.output and "its sets of images are now a known source" in result.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["calibration"]["site"] == "hospital-e" and "site_cv_auc" in card["calibration"]
    after = run("predict", scans, "--model", out, "--out", tmp_path / "after.csv", *common)
    assert after.exit_code == 0, after.output
    rows = list(csv.DictReader(open(tmp_path / "after.csv", newline="")))
    assert all("like hospital-e" in r["answer_note"] for r in rows), [r["answer_note"] for r in rows]
    assert "not assessable" not in {r["answer"] for r in rows if r["in_distribution"] == "true"}
