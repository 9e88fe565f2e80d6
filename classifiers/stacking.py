"""The stacked ensemble: base models per (backbone features x classifier), and a logistic
meta-learner on their out-of-fold probabilities.

Each base model is tuned by patient-grouped CV on the training images; its out-of-fold
probabilities (from the same folds) are the meta-learner's inputs, so the meta-learner
never sees a base model's opinion of an image that model was trained on. Base models are
then refit on all training images.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from feature_extractor.errors import TrainingDataError

from .models import make_classifier
from .tuning import fold_aucs, grouped_folds, tune

DEFAULT_BASE = ("svm", "rf", "xgboost")
META_CS = (0.01, 0.1, 1.0, 10.0)
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class StackedEnsemble(ClassifierMixin, BaseEstimator):
    """Stack of base classifiers over feature blocks with a logistic-regression meta-learner.

    Parameters
    ----------
    blocks : sequence of (name, start, stop), optional
        Column ranges of X, one per backbone, each getting its own base models. None: one
        block of all columns ("all").
    base : sequence of str, default ("svm", "rf", "xgboost")
        Base classifiers (see ``classifiers.models.CLASSIFIERS``), trained on every block.
    n_splits : int, default 5
        Patient-grouped CV folds for tuning and for the out-of-fold probabilities.
    meta_C : float or "auto", default "auto"
        Inverse regularisation of the meta-learner; "auto" picks it from META_CS by grouped
        CV on the out-of-fold base probabilities (cheap: only the meta-learner is refit).
    random_state : int, default 0

    Learned attributes: ``classes_``, ``base_models_`` (list of (block, clf, estimator)),
    ``base_reports_`` (CV AUC and params of each), ``meta_`` (the fitted meta-learner),
    ``oof_`` (out-of-fold P(positive) of the whole stack), ``cv_auc_``, ``cv_auc_std_``,
    ``meta_C_`` (the regularisation used).
    """

    def __init__(self, blocks: Sequence[tuple[str, int, int]] | None = None,
                 base: Sequence[str] = DEFAULT_BASE, n_splits: int = 5, meta_C: float | str = "auto",
                 random_state: int = 0):
        self.blocks = blocks
        self.base = base
        self.n_splits = n_splits
        self.meta_C = meta_C
        self.random_state = random_state

    def _block_list(self, n_features: int) -> list[tuple[str, int, int]]:
        blocks = [("all", 0, n_features)] if self.blocks is None else [tuple(b) for b in self.blocks]
        if any(not 0 <= a < b <= n_features for _, a, b in blocks):
            raise TrainingDataError(f"stack blocks {blocks} do not fit {n_features} feature columns")
        return blocks

    def fit(self, X, y, groups=None) -> "StackedEnsemble":
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise TrainingDataError("Only binary classification is supported: the stack needs "
                                    f"exactly 2 classes, got {len(self.classes_)} class(es)")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if not self.base:
            raise TrainingDataError("the stack needs at least one base classifier")
        self.base_models_, self.base_reports_, oof = [], [], []
        for name, start, stop in self._block_list(X.shape[1]):
            for clf in self.base:
                estimator, grid = make_classifier(clf, y_enc, self.random_state)
                result = tune(estimator, grid, X[:, start:stop], y_enc, groups, self.n_splits,
                              self.random_state)
                self.base_models_.append(((name, start, stop), clf, result.estimator))
                self.base_reports_.append({"block": name, "classifier": clf, "params": result.best_params,
                                           "cv_auc": result.cv_auc, "cv_auc_std": result.cv_auc_std})
                oof.append(result.oof)
        Z = _logit(np.column_stack(oof))
        # The stack's own out-of-fold probabilities, for choosing meta_C, honest thresholds
        # and scores.
        cv = grouped_folds(y_enc, groups, self.n_splits, self.random_state)
        splits = list(cv.split(Z, y_enc, groups))
        held_out = [test for _, test in splits]
        best = None
        for C in (META_CS if self.meta_C == "auto" else (float(self.meta_C),)):
            p = cross_val_predict(LogisticRegression(C=C), Z, y_enc, cv=splits, method="predict_proba")[:, 1]
            aucs = fold_aucs(y_enc, p, held_out)
            if best is None or aucs.mean() > best[1].mean():
                best = (C, aucs, p)
        self.meta_C_, aucs, self.oof_ = best
        self.cv_auc_, self.cv_auc_std_ = float(aucs.mean()), float(aucs.std())
        self.meta_ = LogisticRegression(C=self.meta_C_).fit(Z, y_enc)
        for report, weight in zip(self.base_reports_, self.meta_.coef_[0]):
            report["meta_weight"] = float(weight)
        return self

    def _meta_inputs(self, X) -> np.ndarray:
        check_is_fitted(self, "meta_")
        X = validate_data(self, X, reset=False)
        return _logit(np.column_stack([est.predict_proba(X[:, a:b])[:, 1]
                                       for (_, a, b), _, est in self.base_models_]))

    def predict_proba(self, X) -> np.ndarray:
        Z = self._meta_inputs(X)
        return self.meta_.predict_proba(Z)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def decision_function(self, X) -> np.ndarray:
        Z = self._meta_inputs(X)
        return self.meta_.decision_function(Z)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def meta_weights(self) -> dict[str, float]:
        check_is_fitted(self, "meta_")
        weights = {f"{r['block']}/{r['classifier']}": r["meta_weight"] for r in self.base_reports_}
        return {**weights, "intercept": float(self.meta_.intercept_[0]), "C": float(self.meta_C_)}
