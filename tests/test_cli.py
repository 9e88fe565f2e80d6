"""The command line end to end on a small synthetic COVID-CT replica (weights=none)."""
import csv
import json

import pytest
from click.testing import CliRunner

import cli
from tests.helpers import ct_like


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def test_extract_reports_and_reuses_cache(workspace):
    root, data, first = workspace
    assert "48 images" in first and "0 cached, 48 new" in first
    again = run("extract", "-b", "mobilenetv2", "--weights", "none", "--data", data,
                "--features-dir", root / "features")
    assert again.exit_code == 0 and "48 cached, 0 new" in again.output


@pytest.mark.parametrize("clf", ["svm", pytest.param("rf", marks=pytest.mark.slow), "xgboost", "logreg"])
def test_fit_writes_model_and_manifest(workspace, clf):
    root, data, _ = workspace
    model = root / "models" / f"{clf}.joblib"
    result = run("fit", "--clf", clf, "--data", data, "--features-dir", root / "features",
                 "--model", model, "--cv-folds", "3")
    assert result.exit_code == 0, result.output
    assert "CV AUC" in result.output and model.is_file()
    manifest = json.loads(model.with_suffix(".json").read_text())
    assert manifest["classifier"] == clf
    assert manifest["training"]["splits"] == ["train", "val"]
    assert manifest["training"]["n_images"] == 36  # 9 of 12 patients x 2 classes x 2 slices
    assert manifest["training"]["grouping"] == "patient"
    (bb,) = manifest["backbones"]
    assert bb["backbone"] == "mobilenetv2" and bb["weights_source"] == "none" and len(bb["weights_sha256"]) == 64
    assert (bb["pooling"], bb["tta"], bb["precision"], bb["crop"], bb["window"]) == ("avg", "none", "fp32", "none",
                                                                                    "-600,1500")
    assert bb["feature_dim"] == 1280 and "versions" in manifest and "RANDOM INIT" in manifest["warning"]


def test_evaluate_and_predict(workspace, tmp_path):
    root, data, _ = workspace
    model = root / "models" / "eval.joblib"
    assert run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features",
               "--model", model, "--cv-folds", "3").exit_code == 0
    result = run("evaluate", "--model", model, "--data", data, "--features-dir", root / "features")
    assert result.exit_code == 0, result.output
    assert "split=test" in result.output and "roc_auc" in result.output

    folder = tmp_path / "scans"
    (folder / "deeper").mkdir(parents=True)
    ct_like(1, True).save(folder / "a.png")
    ct_like(2, False).save(folder / "deeper" / "b 50%.jpg")
    ct_like(3, False).save(folder / "=HYPERLINK(x)y.png")  # CSV injection through a file name
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "pred.csv"
    result = run("predict", folder, "--model", model, "--out", out, "--features-dir", root / "features")
    assert result.exit_code == 3, result.output  # documented: done, some files unreadable
    rows = list(csv.DictReader(open(out, newline="")))
    assert [r["path"].split("/")[-1] for r in rows] == ["=HYPERLINK(x)y.png", "a.png", "bad.png", "b 50%.jpg"]
    assert not any(c.startswith(("=", "+", "@")) for r in rows for c in r.values())
    good = [r for r in rows if not r["error"]]
    assert len(good) == 3 and all(0 <= float(r["p_covid"]) <= 1 for r in good)
    assert all(r["label"] in ("COVID", "NonCOVID") for r in good)
    bad = next(r for r in rows if r["error"])
    assert bad["p_covid"] == "" and bad["label"] == ""
    assert "corrupt" in bad["error"] or "recognised" in bad["error"]


def test_user_mistakes_are_one_line_errors(workspace, tmp_path):
    root, data, _ = workspace
    for args, message in [
        (["extract", "-b", "alexnet", "--data", data], "valid names"),
        (["fit", "--clf", "svm", "--data", tmp_path / "nowhere"], "data not found"),
        (["fit", "--clf", "svm", "--data", data, "--features-dir", tmp_path / "empty"], "extract"),
        (["predict", data, "--model", tmp_path / "none.joblib"], "model file not found"),
    ]:
        result = run(*args)
        assert result.exit_code == 1, (args, result.output)
        assert message in result.output and "Traceback" not in result.output


def test_options_that_would_be_silently_ignored_are_refused(logreg_model, tmp_path):
    root, model = logreg_model
    common = ["--model", model, "--features-dir", root / "features"]
    for args, message in [
        (["evaluate", *common, "--cv-by", "source", "--split", "val"], "--split cannot be used with --cv-by source"),
        (["evaluate", *common, "--cv-by", "source", "--cv", "3"], "--cv cannot be used with --cv-by source"),
        (["evaluate", *common, "--cv-by", "source", "--site", "batch"], "--site cannot be used with --cv-by source"),
        (["predict", tmp_path, *common, "--studies", "--crop", "lungs"], "--crop cannot be used with --studies"),
        (["report", *common, "--cv-by", "source", "--split", "val"], "--split cannot be used with --cv-by source"),
        (["evaluate", *common, "--max-slices", "3"], "--max-slices needs --studies"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_help_reads_well():
    for sub in ([], ["extract"], ["fit"], ["predict"], ["evaluate"], ["backbones"]):
        result = run(*sub, "--help")
        assert result.exit_code == 0 and "Usage" in result.output
    listing = run("backbones")
    assert listing.exit_code == 0 and "mobilenetv2" in listing.output and "offline" in listing.output


def test_stack_then_evaluate_writes_report(workspace, tmp_path):
    root, data, _ = workspace
    model = root / "models" / "stack.joblib"
    fit = run("fit", "--clf", "stack", "--base", "logreg,svm", "--data", data, "--features-dir",
              root / "features", "--model", model, "--cv-folds", "3", "--target-sensitivity", "0.9")
    assert fit.exit_code == 0, fit.output
    manifest = json.loads(model.with_suffix(".json").read_text())
    bases = manifest["cv"]["base_models"]
    assert [(b["block"], b["classifier"]) for b in bases] == [("mobilenetv2", "logreg"), ("mobilenetv2", "svm")]
    assert all("cv_auc" in b and "meta_weight" in b for b in bases)
    assert set(manifest["cv"]["meta_weights"]) == {"mobilenetv2/logreg", "mobilenetv2/svm", "intercept", "C"}
    assert manifest["threshold_choice"]["oof_sensitivity"] >= 0.9

    out = tmp_path / "report"
    ev = run("evaluate", "--model", model, "--data", data, "--features-dir", root / "features",
             "--report-dir", out, "--cv", "2", "--bootstrap", "200")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "sensitivity", "specificity", "precision", "f1", "roc_auc"):
        assert set(metrics[key]) == {"value", "ci_low", "ci_high"}
    assert metrics["split"] == "test" and metrics["n"]["images"] == 12
    assert metrics["threshold"] == manifest["threshold"]
    assert metrics["data"]["fingerprint"] and metrics["model"]["classifier"] == "stack"
    assert metrics["bootstrap"]["unit"] == "patient" and set(metrics["patient_level"]) == {"mean", "max"}
    assert metrics["cv"]["n_folds"] == 2
    assert "Research use only" in (out / "report.md").read_text()
    for png in ("roc.png", "calibration.png", "confusion_matrix.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / png).stat().st_size > 10_000


def test_evaluate_on_external_class_folders(workspace, tmp_path):
    """evaluate --data OTHER_FOLDER with COVID/ and NonCOVID/: all its images, image bootstrap."""
    from tests.helpers import make_class_folders

    root, data, _ = workspace
    model = root / "models" / "ext.joblib"
    assert run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features",
               "--model", model, "--cv-folds", "3").exit_code == 0
    other = make_class_folders(tmp_path / "external", n_per_class=5, seed=7)
    ev = run("evaluate", "--model", model, "--data", other, "--features-dir", root / "features",
             "--report-dir", tmp_path / "r", "--bootstrap", "200")
    assert ev.exit_code == 0, ev.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["split"] == "all" and metrics["n"]["images"] == 10
    assert metrics["data"]["layout"] == "class-folders" and metrics["bootstrap"]["unit"] == "image"


@pytest.mark.slow
def test_fit_selects_caches_by_window(workspace, tmp_path):
    """--window is part of the cache identity, so fit can pick a cache by it."""
    root, data, _ = workspace
    features = tmp_path / "features"
    common = ("-b", "mobilenetv2", "--weights", "none", "--data", data, "--features-dir", features, "--batch-size", "16")
    assert run("extract", *common).exit_code == 0
    assert run("extract", *common, "--window", "-1000,400").exit_code == 0
    model = tmp_path / "m.joblib"
    ambiguous = run("fit", "--clf", "logreg", "--data", data, "--features-dir", features, "--model", model)
    assert ambiguous.exit_code == 1 and "--window" in ambiguous.output
    fitted = run("fit", "--clf", "logreg", "--data", data, "--features-dir", features, "--model", model,
                 "--window", "-1000,400", "--cv-folds", "3")
    assert fitted.exit_code == 0, fitted.output
    assert json.loads(model.with_suffix(".json").read_text())["backbones"][0]["window"] == "-1000,400"


@pytest.mark.slow
def test_predict_prints_only_the_tools_own_lines(workspace, tmp_path):
    """A fresh process on new images (the CNN runs eagerly for one batch): no TensorFlow start-up
    notes, no keras warnings; stdout and stderr hold only our lines."""
    import os
    import subprocess
    import sys

    root, data, _ = workspace
    features = tmp_path / "features"
    common = ["--features-dir", str(features)]
    assert run("extract", "-b", "mobilenetv2", "--weights", "none", "--data", data, "--pooling", "multiscale",
               *common).exit_code == 0
    model = tmp_path / "m.joblib"
    assert run("fit", "--clf", "logreg", "--data", data, "--model", model, "--cv-folds", "3", *common).exit_code == 0
    scans = tmp_path / "scans"
    scans.mkdir()
    ct_like(501, True).save(scans / "new.png")
    (scans / "broken.png").write_bytes(b"not an image")
    env = {**os.environ, "COVIDCT_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "cli.py", "predict", str(scans), "--model", str(model),
                           "--out", str(tmp_path / "p.csv"), *common], capture_output=True, text=True,
                          env=env, cwd=cli.__file__.rsplit("/", 1)[0], timeout=300)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("2 files, answers: ")
    assert [line.strip() for line in proc.stderr.strip().splitlines()] == [
        f"{scans / 'broken.png'}: not a recognised image format"]


def test_a_library_warning_becomes_one_line_of_ours(monkeypatch):
    import warnings

    import feature_extractor.weights as weights

    def listing():
        warnings.warn("The structure of `inputs` doesn't match the expected structure.\nExpected: [...]\n"
                      "Received: inputs=Tensor(...)", UserWarning)
        return "the listing"

    monkeypatch.setattr(weights, "backbones_listing", listing)
    result = run("backbones")
    assert result.exit_code == 0 and "the listing" in result.output
    (line,) = [line for line in result.output.splitlines() if "warning" in line]
    assert line.startswith("  warning: The structure of `inputs` doesn't match") and "UserWarning" in line
    assert "Expected" not in result.output


def test_evaluate_reports_the_share_out_of_distribution(workspace, tmp_path):
    root, data, _ = workspace
    model = root / "models" / "eval.joblib"
    if not model.exists():
        assert run("fit", "--clf", "logreg", "--data", data, "--features-dir", root / "features",
                   "--model", model, "--cv-folds", "3").exit_code == 0
    result = run("evaluate", "--model", model, "--data", data, "--features-dir", root / "features",
                 "--report-dir", tmp_path / "r", "--bootstrap", "200")
    assert result.exit_code == 0 and "out of distribution: " in result.output
    no_site = run("evaluate", "--model", model, "--data", data, "--features-dir", root / "features", "--site", "x")
    assert no_site.exit_code == 1 and "--site is for models fit with --harmonize" in no_site.output
    ood = json.loads((tmp_path / "r" / "metrics.json").read_text())["out_of_distribution"]
    assert ood["n"] == 12 and 0 <= ood["n_flagged"] <= 12 and ood["detector"]["n_training_images"] == 36


def test_csv_cells_that_a_spreadsheet_would_run_are_neutralised(tmp_path):
    from classifiers.presentation.csv_files import safe_cell, write_csv

    assert safe_cell("=HYPERLINK(\"http://x\")x.png") == "'=HYPERLINK(\"http://x\")x.png"
    assert [safe_cell(v) for v in ("+1+cmd", "-x", "@SUM(A1)", "\tx", "ok.png", "-0.25", None)] == [
        "'+1+cmd", "'-x", "'@SUM(A1)", "'\tx", "ok.png", "-0.25", ""]
    out = write_csv(tmp_path / "x.csv", ["path"], [["=cmd|' /C calc'!A0"], ["scans/=HYPERLINK(x)y.png"]])
    assert out.read_text().splitlines()[1:] == ["'=cmd|' /C calc'!A0", "scans/=HYPERLINK(x)y.png"]


def test_serve_refuses_to_listen_beyond_loopback_without_a_token(tmp_path):
    result = run("serve", "--host", "0.0.0.0", "--model", tmp_path / "none.joblib")
    assert result.exit_code == 1 and "needs --token-file" in result.output
    assert "Traceback" not in result.output


def test_serve_without_the_web_extra_is_one_clear_error(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    result = run("serve", "--model", tmp_path / "none.joblib")
    assert result.exit_code == 1 and 'pip install -e ".[serve]"' in result.output
