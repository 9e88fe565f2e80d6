"""The stacked ensemble: base models per (block of feature columns x classifier), and a
final estimator on their out-of-fold probabilities.

Shaped like scikit-learn's StackingClassifier (base estimators as objects, the final
estimator and the CV splitter as parameters), with what deep features of several backbones
need: every base estimator is fitted on every block (one block per backbone), folds are
grouped by patient, and the final estimator's hyperparameters are chosen by grouped CV.
A base estimator's out-of-fold probabilities come from its own tuning when it is a
:class:`GroupedSearchCV` (given the stack's folds), else from ``cross_val_predict`` on the
same folds; so the final estimator never sees a base model's opinion of an image that model
was trained on. Base models are then refit on all training images.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict
from sklearn.utils._param_validation import HasMethods
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from covidct_core.errors import TrainingDataError

from .registry import DEFAULT_BASE, get_classifier
from .search import GroupedSearchCV, fold_aucs, fold_splits, sample_weight_params

FINAL_CS = (0.01, 0.1, 1.0, 10.0)  # the default final estimator's candidate regularisation
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _fit(estimator: BaseEstimator, X: np.ndarray, y: np.ndarray, groups: np.ndarray,
         sample_weight: np.ndarray | None) -> BaseEstimator:
    if "groups" in inspect.signature(estimator.fit).parameters:
        extra = {} if sample_weight is None else {"sample_weight": sample_weight}
        return estimator.fit(X, y, groups=groups, **extra)
    return estimator.fit(X, y, **sample_weight_params(estimator, sample_weight))


class StackedEnsemble(ClassifierMixin, BaseEstimator):
    """Stack of base classifiers over feature blocks, with a final estimator on their
    out-of-fold probabilities (as logits).

    Parameters
    ----------
    estimators : list of (str, estimator), optional
        Base classifiers with ``predict_proba``; each is cloned and fitted on every block.
        Default: the registry's svm, rf and xgboost, each in a :class:`GroupedSearchCV` (with
        their own class weighting, unless ``fit`` is given sample weights).
    blocks : sequence of (name, start, stop), optional
        Column ranges of X, one per backbone. None: one block of all columns ("all").
    final_estimator : estimator, optional
        Fitted on the logits of the base models' out-of-fold probabilities. Default:
        ``LogisticRegression()``.
    final_param_grid : dict, optional
        The final estimator's candidates, chosen by grouped CV on those logits (cheap: only
        the final estimator is refit). None: ``{"C": FINAL_CS}`` when it has a ``C``, else none.
    cv : int or splitter, default 5
        Folds for the base models' out-of-fold probabilities and the final estimator's CV; an
        int means that many stratified folds grouped by ``groups``.
    random_state : int, default 0
        Shuffles int folds, and seeds the default base estimators.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    n_features_in_ : int
    base_models_ : list of ((block, start, stop), name, estimator)
        The fitted base models (a search's best estimator).
    base_reports_ : list of dict
        Per base model: block, classifier, params, cv_auc, cv_auc_std, meta_weight.
    final_estimator_ : estimator
        The fitted final estimator.
    final_params_ : dict
        The final estimator's chosen hyperparameters.
    oof_ : ndarray of shape (n_samples,)
        The stack's own out-of-fold probability of ``classes_[1]``.
    cv_auc_, cv_auc_std_ : float
        Mean and standard deviation over folds of the stack's held-out AUC.
    """

    _parameter_constraints: dict = {
        "estimators": [list, None], "blocks": [list, None],
        "final_estimator": [HasMethods(["fit", "predict_proba"]), None], "final_param_grid": [dict, None],
        "cv": ["cv_object"], "random_state": ["random_state"],
    }

    def __init__(self, estimators: Sequence[tuple[str, BaseEstimator]] | None = None,
                 blocks: Sequence[tuple[str, int, int]] | None = None,
                 final_estimator: BaseEstimator | None = None,
                 final_param_grid: Mapping[str, Sequence] | None = None,
                 cv: int | Any = 5, random_state: int = 0):
        self.estimators = estimators
        self.blocks = blocks
        self.final_estimator = final_estimator
        self.final_param_grid = final_param_grid
        self.cv = cv
        self.random_state = random_state

    def _block_list(self, n_features: int) -> list[tuple[str, int, int]]:
        blocks = [("all", 0, n_features)] if self.blocks is None else [tuple(b) for b in self.blocks]
        if any(not 0 <= a < b <= n_features for _, a, b in blocks):
            raise TrainingDataError(f"stack blocks {blocks} do not fit {n_features} feature columns")
        return blocks

    def _base_estimators(self, y: np.ndarray, weighted: bool) -> list[tuple[str, BaseEstimator]]:
        if self.estimators is not None:
            return list(self.estimators)
        return [(name, get_classifier(name).search(self.cv, self.random_state, y, class_weighted=not weighted))
                for name in DEFAULT_BASE]

    def fit(self, X, y, groups=None, sample_weight=None) -> "StackedEnsemble":
        """``groups``: patient of each row (folds never split one); ``sample_weight``: weights
        for every base and final fit and every held-out AUC."""
        self._validate_params()
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) != 2:
            raise TrainingDataError("Only binary classification is supported: the stack needs "
                                    f"exactly 2 classes, got {len(self.classes_)} class(es)")
        groups = np.arange(len(y)) if groups is None else np.asarray(groups)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        estimators = self._base_estimators(y_enc, sample_weight is not None)
        if not estimators:
            raise TrainingDataError("the stack needs at least one base classifier")
        splits = fold_splits(self.cv, X, y_enc, groups, self.random_state)
        held_out = [test for _, test in splits]
        self.base_models_, self.base_reports_, oof = [], [], []
        for block in self._block_list(X.shape[1]):
            Xb = X[:, block[1]:block[2]]
            for name, estimator in estimators:
                model = clone(estimator)
                if isinstance(model, GroupedSearchCV):
                    model.set_params(cv=splits)  # the same folds everywhere: honest out-of-fold inputs
                _fit(model, Xb, y_enc, groups, sample_weight)
                if hasattr(model, "oof_"):  # a search: its best candidate's out-of-fold probabilities
                    p, params = model.oof_, model.best_params_
                    auc, auc_std = model.cv_auc_, model.cv_auc_std_
                else:
                    p = cross_val_predict(clone(estimator), Xb, y_enc, cv=splits, method="predict_proba",
                                          params=sample_weight_params(estimator, sample_weight))[:, 1]
                    aucs = fold_aucs(y_enc, p, held_out, sample_weight)
                    params, auc, auc_std = {}, float(aucs.mean()), float(aucs.std())
                self.base_models_.append((block, name, getattr(model, "best_estimator_", model)))
                self.base_reports_.append({"block": block[0], "classifier": name, "params": params,
                                           "cv_auc": auc, "cv_auc_std": auc_std})
                oof.append(p)
        Z = _logit(np.column_stack(oof))
        final = LogisticRegression() if self.final_estimator is None else self.final_estimator
        grid = self.final_param_grid
        if grid is None:
            grid = {"C": FINAL_CS} if "C" in final.get_params() else {}
        meta = GroupedSearchCV(final, grid, cv=splits).fit(Z, y_enc, groups, sample_weight)
        self.final_estimator_, self.final_params_ = meta.best_estimator_, meta.best_params_
        self.oof_, self.cv_auc_, self.cv_auc_std_ = meta.oof_, meta.cv_auc_, meta.cv_auc_std_
        weights = getattr(self.final_estimator_, "coef_", np.full((1, len(oof)), np.nan))[0]
        for report, weight in zip(self.base_reports_, weights):
            report["meta_weight"] = float(weight)
        return self

    def _final(self) -> BaseEstimator:
        if hasattr(self, "final_estimator_"):
            return self.final_estimator_
        return LogisticRegression() if self.final_estimator is None else self.final_estimator

    def _meta_inputs(self, X) -> np.ndarray:
        check_is_fitted(self, "final_estimator_")
        X = validate_data(self, X, reset=False)
        return _logit(np.column_stack([est.predict_proba(X[:, a:b])[:, 1]
                                       for (_, a, b), _, est in self.base_models_]))

    def predict_proba(self, X) -> np.ndarray:
        Z = self._meta_inputs(X)  # checks fitted before final_estimator_ is read
        return self.final_estimator_.predict_proba(Z)

    @available_if(lambda self: hasattr(self._final(), "decision_function"))
    def decision_function(self, X) -> np.ndarray:
        Z = self._meta_inputs(X)
        return self.final_estimator_.decision_function(Z)

    def predict(self, X) -> np.ndarray:
        p = self.predict_proba(X)[:, 1]
        return self.classes_[(p >= 0.5).astype(int)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def meta_weights(self) -> dict[str, float]:
        """Each base model's weight in the final estimator, its intercept and chosen params."""
        check_is_fitted(self, "final_estimator_")
        weights = {f"{r['block']}/{r['classifier']}": r["meta_weight"] for r in self.base_reports_}
        intercept = float(np.ravel(getattr(self.final_estimator_, "intercept_", [np.nan]))[0])
        return {**weights, "intercept": intercept, **self.final_params_}
