import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score

from classifiers.estimators.registry import CLASSIFIERS, get_classifier
from classifiers.estimators.search import GroupedSearchCV, grouped_folds
from classifiers.records.model_card import ModelCard
from classifiers.workflows.bundle import ModelBundle, latest_model, load_bundle, save_bundle
from covidct_core.errors import CovidCTError, ModelBundleError


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


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "rf" else n for n in CLASSIFIERS])
def test_each_classifier_tunes_and_predicts(name):
    X, y, groups = grouped_data()
    model, grid = get_classifier(name).build(0, y)
    clone(model)  # a proper scikit-learn estimator
    search = get_classifier(name).search(cv=3, y=y).fit(X, y, groups)
    assert search.cv_auc_ > 0.75 and search.n_splits_ == 3
    assert set(search.best_params_) == set(grid) and search.oof_.shape == y.shape
    assert len(search.candidates_) == np.prod([len(v) for v in grid.values()])
    p = search.predict_proba(X)[:, 1]
    assert p.shape == (len(y),) and ((0 <= p) & (p <= 1)).all()
    # works with plain sklearn CV too
    assert cross_val_score(clone(model), X, y, cv=grouped_folds(y, groups, 3), groups=groups,
                           scoring="roc_auc").mean() > 0.7


def test_search_keeps_the_best_candidates_out_of_fold_probabilities():
    """cv_auc_ is the mean held-out AUC of oof_ over the same grouped folds, and no other
    candidate scored higher."""
    from classifiers.estimators.search import fold_aucs

    X, y, groups = grouped_data()
    model, _ = get_classifier("logreg").build()
    search = GroupedSearchCV(model, {"logisticregression__C": [1e-4, 1e-2, 1.0]}, cv=3).fit(X, y, groups)
    held_out = [test for _, test in grouped_folds(y, groups, 3).split(X, y, groups)]
    assert fold_aucs(y, search.oof_, held_out).mean() == pytest.approx(search.cv_auc_)
    assert search.cv_auc_ == max(c["cv_auc"] for c in search.candidates_)
    best = next(c for c in search.candidates_ if c["cv_auc"] == search.cv_auc_)
    assert search.best_params_ == best["params"]
    assert search.best_estimator_.get_params()["logisticregression__C"] == best["params"]["logisticregression__C"]


def test_the_blas_svc_scores_as_libsvm_does():
    from sklearn.svm import SVC

    from classifiers.estimators.rbf_svc import RBFSVC

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 40))
    y = (X[:, 0] + rng.normal(size=300) > 0).astype(int)
    new = rng.normal(size=(2500, 40))  # more rows than one block
    for params in ({"C": 3.0}, {"C": 0.3, "gamma": 0.01, "class_weight": "balanced"}):
        ours, theirs = RBFSVC(**params).fit(X, y), SVC(**params).fit(X, y)
        assert np.allclose(ours.decision_function(new), theirs.decision_function(new), rtol=0, atol=1e-9)
        assert clone(ours).get_params() == theirs.get_params()
    three = np.arange(300) % 3  # anything but the binary RBF case is SVC's own
    assert np.array_equal(RBFSVC().fit(X, three).decision_function(new[:5]), SVC().fit(X, three).decision_function(new[:5]))


def test_one_class_is_an_error():
    X, y, groups = grouped_data()
    with pytest.raises(CovidCTError, match="both classes"):
        get_classifier("logreg").search().fit(X, np.zeros_like(y), groups)


def test_unknown_classifier_lists_the_registry():
    with pytest.raises(CovidCTError, match="svm, rf, xgboost, logreg"):
        get_classifier("knn")


FORMAT_3 = Path(__file__).parent / "data" / "manifest-format-3.json"


def fitted_bundle(tmp_path):
    X, y, groups = grouped_data()
    model, _ = get_classifier("logreg").build()
    card = ModelCard.from_manifest(json.loads(FORMAT_3.read_text()))
    card = card.with_changes(command="cli.py fit --clf logreg", feature_dim=X.shape[1])
    return save_bundle(ModelBundle(model.fit(X, y), card, tmp_path / "models" / "m.joblib"))


def test_bundle_round_trip_and_hash(tmp_path):
    bundle = fitted_bundle(tmp_path)
    manifest = json.loads((tmp_path / "models" / "m.json").read_text())
    assert manifest["model_sha256"] and manifest["model_file"] == "m.joblib"
    assert manifest["format_version"] == 6 and manifest["error_rate"] == 0.1
    loaded = load_bundle(bundle.path)
    assert loaded.card == bundle.card and loaded.card.classifier == "logreg"
    assert ModelCard.from_manifest(manifest).to_manifest() == manifest  # the reader and writer agree
    assert latest_model(tmp_path / "models") == bundle.path


@pytest.mark.parametrize("version", [2, 3])
def test_old_manifest_formats_load_through_the_one_reader(version):
    """A format-3 manifest as fit wrote it before the card, and a format-2 one (no harmonization,
    detector or study aggregation): read by ModelCard.from_manifest with the current defaults."""
    manifest = json.loads(FORMAT_3.read_text())
    if version == 2:
        for key in ("harmonization", "ood", "study_aggregation"):
            del manifest[key]
        del manifest["fit"]["harmonize"]
        manifest["format_version"] = 2
    card = ModelCard.from_manifest(manifest)
    assert card.format_version == version and card.classifier == "logreg" and card.feature_dim == 448
    assert card.fit.harmonize == "none" and card.harmonization.method == "none"
    assert card.aggregation == ("mean" if version == 2 else manifest["study_aggregation"]["method"])
    assert card.error_rate == 0.1 and card.answers is None and card.lesion is None
    assert (card.ood is None) == (version == 2)
    assert card.specs[0].backbone == "mobilenet025" and card.blocks == [("mobilenet025", 0, 448)]
    assert card.training.fingerprint == manifest["training"]["fingerprint"]
    assert card.refit_settings.balance == "class" and card.fit.balance is None
    written = card.to_manifest()
    assert written["format_version"] == 6 and ModelCard.from_manifest(written) == card.with_changes(format_version=6)


def test_changed_model_file_is_refused(tmp_path):
    bundle = fitted_bundle(tmp_path)
    data = bytearray(bundle.path.read_bytes())
    data[len(data) // 2] ^= 1
    bundle.path.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError, match=r"refusing to load .*m\.joblib"):
        load_bundle(bundle.path)


@pytest.mark.parametrize("version, hint", [(999, "version that wrote it"),
                                           (1, "Refit it .*: python cli.py fit --clf logreg")])
def test_incompatible_manifest_is_refused(tmp_path, version, hint):
    bundle = fitted_bundle(tmp_path)
    path = bundle.path.with_suffix(".json")
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": version}))
    with pytest.raises(ModelBundleError, match=f"format {version}.*{hint}"):
        load_bundle(bundle.path)


def test_no_model_yet(tmp_path):
    with pytest.raises(ModelBundleError, match="fit"):
        latest_model(tmp_path)


def test_a_new_classifier_is_one_registry_entry(workspace, monkeypatch, tmp_path):
    """fit --clf, the stack's --base and the manifest take a classifier from its registry entry alone."""
    from sklearn.neighbors import KNeighborsClassifier

    from classifiers.estimators.registry import ClassifierEntry
    from classifiers.workflows.train import FitSettings, fit_model
    from covidct_core.run_context import RunContext

    entry = ClassifierEntry("knn", lambda random_state, y, class_weighted: KNeighborsClassifier(), {"n_neighbors": (3, 5)},
                            True, "k nearest neighbours")
    monkeypatch.setitem(CLASSIFIERS, "knn", entry)
    root, data, _ = workspace
    context = RunContext(root / "features")
    alone = fit_model(data, fit=FitSettings("knn", cv_folds=3), context=context, model_path=tmp_path / "knn.joblib")
    assert set(alone.card.params) == {"kneighborsclassifier__n_neighbors"}  # scaled: in a pipeline
    assert alone.estimator.steps[0][0] == "standardscaler"
    stack = fit_model(data, fit=FitSettings("stack", base=("knn", "logreg"), cv_folds=3), context=context,
                      model_path=tmp_path / "stack.joblib")
    assert [b["classifier"] for b in stack.card.cv["base_models"]] == ["knn", "logreg"]


def test_the_command_line_offers_exactly_the_registry():
    import cli

    clf = next(p for p in cli.fit.params if p.name == "clf")
    assert list(clf.type.choices) == [*CLASSIFIERS, "stack"]
    with pytest.raises(CovidCTError, match="--base: unknown base .knn.; valid: svm, rf, xgboost, logreg"):
        from classifiers.workflows.train import FitSettings

        FitSettings("stack", base=("svm", "knn"))


def test_a_format_2_model_still_loads(tmp_path):
    """Format 2 (the joblib file is the estimator alone) loads as a model without a
    harmonizer or OOD detector."""
    import joblib

    from covidct_core.provenance import sha256_file

    bundle = fitted_bundle(tmp_path)
    joblib.dump(bundle.estimator, bundle.path)
    path = bundle.path.with_suffix(".json")
    manifest = json.loads(path.read_text())
    path.write_text(json.dumps({**manifest, "format_version": 2, "model_sha256": sha256_file(bundle.path)}))
    old = load_bundle(bundle.path)
    assert not old.harmonizer.active and old.ood is None and hasattr(old.estimator, "predict_proba")
