import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from classifiers.bundle import latest_model, load_bundle, save_bundle
from classifiers.models import CLASSIFIERS, make_classifier
from classifiers.tuning import grouped_folds, tune
from feature_extractor.errors import CovidCTError, ModelBundleError


def grouped_data(n_patients=30, per_patient=3, dim=20, seed=0):
    """Features where each patient has its own offset: leaking patients across folds would help."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.permutation(np.arange(n_patients) % 2), per_patient)
    groups = np.repeat(np.arange(n_patients), per_patient).astype(str)
    X = rng.normal(size=(len(y), dim)) + np.repeat(rng.normal(0, 1, (n_patients, dim)), per_patient, axis=0)
    X[:, :3] += 2.5 * y[:, None]
    return X, y, groups


def test_grouped_folds_keep_patients_together():
    X, y, groups = grouped_data()
    for train, test in grouped_folds(y, groups, 5).split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_each_classifier_tunes_and_predicts(name):
    X, y, groups = grouped_data()
    model, grid = make_classifier(name, y)
    clone(model)  # a proper scikit-learn estimator
    result = tune(model, grid, X, y, groups, n_splits=3)
    assert result.cv_auc > 0.75 and result.n_folds == 3
    assert set(result.best_params) == set(grid)
    p = result.estimator.predict_proba(X)[:, 1]
    assert p.shape == (len(y),) and ((0 <= p) & (p <= 1)).all()
    # works with plain sklearn CV too
    assert cross_val_score(clone(model), X, y, cv=grouped_folds(y, groups, 3), groups=groups,
                           scoring="roc_auc").mean() > 0.7


def test_one_class_is_an_error():
    X, y, groups = grouped_data()
    model, grid = make_classifier("logreg")
    with pytest.raises(CovidCTError, match="both classes"):
        tune(model, grid, X, np.zeros_like(y), groups)


def test_unknown_classifier():
    with pytest.raises(CovidCTError, match="svm"):
        make_classifier("knn")


def fitted_bundle(tmp_path):
    X, y, groups = grouped_data()
    model, _ = make_classifier("logreg")
    return save_bundle(model.fit(X, y), {"classifier": "logreg"}, tmp_path / "models" / "m.joblib")


def test_bundle_round_trip_and_hash(tmp_path):
    bundle = fitted_bundle(tmp_path)
    manifest = json.loads((tmp_path / "models" / "m.json").read_text())
    assert manifest["model_sha256"] and manifest["model_file"] == "m.joblib"
    assert load_bundle(bundle.path).manifest["classifier"] == "logreg"
    assert latest_model(tmp_path / "models") == bundle.path


def test_changed_model_file_is_refused(tmp_path):
    bundle = fitted_bundle(tmp_path)
    data = bytearray(bundle.path.read_bytes())
    data[len(data) // 2] ^= 1
    bundle.path.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=r"refusing to load .*m\.joblib"):
        load_bundle(bundle.path)


def test_incompatible_manifest_is_refused(tmp_path):
    bundle = fitted_bundle(tmp_path)
    path = bundle.path.with_suffix(".json")
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": 999}))
    with pytest.raises(ModelBundleError, match="format"):
        load_bundle(bundle.path)


def test_no_model_yet(tmp_path):
    with pytest.raises(ModelBundleError, match="fit"):
        latest_model(tmp_path)
