"""predict --explain: occlusion for any classifier (the stack too), Grad-CAM for linear heads."""
import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cli
from classifiers.estimators.registry import get_classifier
from classifiers.presentation.heatmaps import explanation_filename
from classifiers.workflows.explain import ModelExplainer, linear_head
from classifiers.workflows.model import load_model
from covidct_core.run_context import RunContext
from feature_extractor.imaging.dataset import Record
from tests.helpers import ct_like


def run(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def models(workspace):
    """svm, logreg and stack fitted once on the workspace's (random-init) features."""
    root, data, _ = workspace
    out = {}
    for clf in ("svm", "logreg", "stack"):
        path = root / "models" / f"explain-{clf}.joblib"
        extra = ("--base", "svm,logreg") if clf == "stack" else ()
        result = run("fit", "--clf", clf, "--data", data, "--features-dir", root / "features",
                     "--model", path, "--cv-folds", "3", *extra)
        assert result.exit_code == 0, result.output
        out[clf] = path
    return out


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    ct_like(11, True).save(folder / "a.png")
    ct_like(12, False).save(folder / "sub" / "b 50%.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


@pytest.mark.parametrize("clf", ["svm", "stack"])
def test_predict_explain_writes_one_heatmap_per_readable_image(workspace, models, scans, tmp_path, clf):
    root, _, _ = workspace
    out = tmp_path / "pred.csv"
    result = run("predict", scans, "--model", models[clf], "--out", out, "--features-dir", root / "features",
                 "--explain", "--explain-dir", tmp_path / "heat")
    assert result.exit_code == 3, result.output  # broken.png: a row with its reason, no heatmap
    assert "wrote 2 occlusion heatmaps" in result.output
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(out, newline=""))}
    assert rows["broken.png"]["heatmap"] == "" and rows["broken.png"]["error"]
    pngs = sorted((tmp_path / "heat").glob("*.png"))
    assert len(pngs) == 2
    for name in ("a.png", "b 50%.jpg"):
        png = rows[name]["heatmap"]
        assert png and Image.open(png).size[0] > 600  # the slice and its heatmap side by side
    assert {p.name for p in pngs} == {rows["a.png"]["heatmap"].split("/")[-1],
                                      rows["b 50%.jpg"]["heatmap"].split("/")[-1]}


def test_occlusion_scores_match_predict_and_the_map_follows_the_lungs(workspace, models):
    """The unoccluded score is the model's prediction, and hiding lung tissue (where the
    COVID blotches are) moves the score more than hiding the air around the body."""
    root, data, _ = workspace
    model = load_model(models["svm"], RunContext(root / "features"))
    explainer = ModelExplainer(model)
    drops_in, drops_out = [], []
    for path in sorted((data / "CT_COVID").iterdir())[:4]:
        expl = explainer.explain(path)
        assert expl.heatmap.shape == explainer.canvas_size
        size = expl.heatmap.shape[0]
        yy, xx = np.mgrid[0:size, 0:size] / size
        lungs = np.zeros((size, size), bool)
        for cx in (0.33, 0.67):
            lungs |= ((yy - 0.5) / 0.3) ** 2 + ((xx - cx) / 0.13) ** 2 < 1
        air = (yy - 0.5) ** 2 + (xx - 0.5) ** 2 > 0.25
        drops_in.append(np.abs(expl.heatmap[lungs]).mean())
        drops_out.append(np.abs(expl.heatmap[air]).mean())
    assert np.mean(drops_in) > np.mean(drops_out)
    # the explanation's own score is the model's prediction of the same image
    record = Record(path=str(sorted((data / "CT_COVID").iterdir())[0]))
    expl = explainer.explain(record.path)
    assert expl.p_covid == pytest.approx(float(model.predict_proba(model.features([record]).X)[0]), abs=1e-4)


def test_gradcam_for_a_linear_head(workspace, models, scans, tmp_path):
    root, _, _ = workspace
    result = run("predict", scans, "--model", models["logreg"], "--out", tmp_path / "p.csv",
                 "--features-dir", root / "features", "--explain", "--explain-method", "gradcam",
                 "--explain-dir", tmp_path / "cam")
    assert result.exit_code == 3 and "wrote 2 gradcam heatmaps" in result.output, result.output
    model = load_model(models["logreg"], RunContext(root / "features"))
    explainer = ModelExplainer(model, method="gradcam")
    expl = explainer.explain(scans / "a.png")
    assert expl.heatmap.max() > 0  # some region raised the score
    # the maps decompose the logit exactly: centre + the mean of every map
    canvas = explainer.extractors[0].prepare(scans / "a.png").model_input(explainer.canvas_size)
    maps, logit0, _ = explainer.class_activation_maps(canvas)
    feats = model.features([Record(path=str(scans / "a.png"))])
    logit = float(model.bundle.estimator.decision_function(feats.X)[0])
    assert logit0 + sum(float(m.mean()) for m in maps) == pytest.approx(logit, rel=1e-3, abs=1e-3)


def test_gradcam_refuses_a_nonlinear_head_with_a_clear_message(workspace, models, scans, tmp_path):
    root, _, _ = workspace
    result = run("predict", scans, "--model", models["svm"], "--out", tmp_path / "p.csv",
                 "--features-dir", root / "features", "--explain", "--explain-method", "gradcam")
    assert result.exit_code == 1
    assert "Grad-CAM needs a linear head" in result.output and "Traceback" not in result.output


def test_linear_head_folds_the_scaler_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(3, 2, (60, 7)) * rng.uniform(0.1, 10, 7)
    y = (X[:, 0] + rng.normal(0, 1, 60) > 3).astype(int)
    pipe = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    w, b, centre = linear_head(pipe)
    assert np.allclose(centre, X.mean(axis=0))
    assert np.allclose(X @ w + b, pipe.decision_function(X))
    assert linear_head(get_classifier("svm").build()[0].fit(X, y)) is None  # RBF SVM: not linear


def test_heatmap_file_names_are_safe_and_unique(tmp_path):
    a = explanation_filename(tmp_path / "x" / "scan 1%.png", tmp_path)
    b = explanation_filename(tmp_path / "y" / "scan 1%.png", tmp_path)
    c = explanation_filename(tmp_path / "x" / "scan 1%.png", tmp_path)
    assert a != b and a == c
    assert all(ch.isalnum() or ch in "._-" for ch in a) and a.endswith(".png")


@pytest.mark.parametrize("command", ["predict", "report"])
def test_a_command_loads_the_model_once_and_builds_each_cnn_once(workspace, models, tmp_path, monkeypatch,
                                                                 command):
    """The explainer and the predictions (or the evaluation) share one loaded, verified model
    and its extractors."""
    import classifiers.workflows.model as model_module
    import feature_extractor.extract as extract_module

    calls = {"load": 0, "build": 0}

    def counted(name, function):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(model_module, "load_bundle", counted("load", model_module.load_bundle))
    monkeypatch.setattr(extract_module, "build_with_weights", counted("build", extract_module.build_with_weights))
    root, data, _ = workspace
    folder = tmp_path / "new"
    folder.mkdir()
    ct_like(77, True).save(folder / "never-seen.png")  # not cached: the CNN must run for predict too
    common = ("--model", models["stack"], "--features-dir", root / "features")
    if command == "predict":
        result = run("predict", folder, *common, "--out", tmp_path / "p.csv", "--explain",
                     "--explain-dir", tmp_path / "heat")
    else:
        result = run("report", *common, "--data", folder, "--out", tmp_path / "r.html", "--heatmaps", "1")
    assert result.exit_code == 0, result.output
    assert calls == {"load": 1, "build": 1}  # one model file, one backbone
