"""Site standardization and the out-of-distribution score, on synthetic features."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from classifiers.estimators.harmonize import HarmonizationError, SiteStandardizer, make_harmonizer
from classifiers.estimators.ood import NearestNeighborOOD
from classifiers.workflows.explain import linear_head


def two_sites(n=60, d=8, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, d))
    b = rng.normal(5, 3, (n, d))  # the same signal seen through another scanner
    return np.vstack([a, b]), np.array(["a"] * n + ["b"] * n, dtype=object)


def test_each_site_is_standardized_by_its_own_statistics():
    X, sites = two_sites()
    Z = SiteStandardizer().fit_transform(X, sites)
    for site in ("a", "b"):
        assert np.allclose(Z[sites == site].mean(0), 0, atol=1e-9)
        assert np.allclose(Z[sites == site].std(0), 1, atol=1e-9)
    with pytest.raises(HarmonizationError, match="unknown harmonization"):
        make_harmonizer("combat-ish")


def test_every_harmonization_has_the_one_interface():
    """fit, predict, calibrate and leave one source out use the same calls whatever the method."""
    X, sites = two_sites()
    for method in ("none", "standardize"):
        h = make_harmonizer(method).fit(X[sites == "a"], sites[sites == "a"])
        known = h.with_site("b", X[sites == "b"])  # a copy that also knows b
        Z = known.transform(X, sites)
        assert h.knows("b") is False and known.knows("b") is (method == "standardize")
        assert h.active is known.active is (method == "standardize")
        if method == "none":
            assert Z is X and known.site_step("b") == "passthrough" and known.sites == []
        else:
            assert np.allclose(Z[sites == "b"].mean(0), 0, atol=1e-9) and known.sites == ["a", "b"]
            assert isinstance(known.site_step("b"), StandardScaler)


def test_a_new_site_is_learned_from_enough_unlabeled_images_only():
    X, sites = two_sites()
    h = SiteStandardizer().fit(X[sites == "a"], sites[sites == "a"])
    with pytest.raises(HarmonizationError, match="no statistics of site 'b'; known: a"):
        h.transform(X[sites == "b"], sites[sites == "b"])
    with pytest.raises(HarmonizationError, match="5 readable images.*at least 20"):
        h.with_site("b", X[sites == "b"][:5])
    learned = h.with_site("b", X[sites == "b"])
    assert h.sites == ["a"]  # the fitted harmonizer is not changed: a copy knows the new site
    h = learned
    assert h.sites == ["a", "b"] and h.n_images_["b"] == 60
    assert abs(h.transform(X[sites == "b"], sites[sites == "b"]).mean()) < 1e-9


def test_a_sites_scaler_folds_into_a_linear_head():
    """Grad-CAM reads a linear head on raw features: the site's scaler folds in exactly."""
    X, sites = two_sites()
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    h = SiteStandardizer().fit(X, sites)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(h.transform(X, sites), y)
    raw = Pipeline([("site", h.scaler("b"))] + clf.steps)
    w, b, _ = linear_head(raw)
    Xb = X[sites == "b"]
    expected = clf.decision_function(h.transform(Xb, ["b"] * len(Xb)))
    assert np.allclose(Xb @ w + b, expected)


def relu_features(n, d, rng, active=None):
    """Non-negative features like a CNN's after ReLU: a few patterns of active units."""
    active = np.arange(d // 2) if active is None else active
    X = np.zeros((n, d))
    X[:, active] = np.maximum(rng.normal(1.0, 1.0, (n, len(active))), 0)
    return X, rng.integers(0, 2, n), np.arange(n) // 2  # two slices per patient


def test_ood_cut_off_flags_about_one_percent_of_new_in_distribution_images():
    rng = np.random.default_rng(1)
    X, y, groups = relu_features(400, 30, rng)
    detector = NearestNeighborOOD().fit(X, y, groups)
    assert detector.oof_scores_.shape == (400,)
    assert np.isclose(np.mean(detector.oof_scores_ > detector.threshold_), 0.01, atol=0.005)
    same, _, _ = relu_features(2000, 30, rng)
    flagged = 1 - detector.in_distribution(detector.score_samples(same)).mean()
    assert flagged < 0.04
    other, _, _ = relu_features(200, 30, rng, active=np.arange(10, 25))  # other units fire
    assert (~detector.in_distribution(detector.score_samples(other))).mean() > 0.95
    described = detector.describe()
    assert described["n_training_images"] == 400 and "99% quantile" in described["cut_off_rule"]


def test_a_set_unlike_every_training_source_is_caught_by_the_source_test_though_each_image_passes():
    from classifiers.estimators.source_test import SourceTest

    rng = np.random.default_rng(3)
    X, y, groups = relu_features(400, 30, rng)
    sources = np.where(np.arange(400) < 200, "a", "b")
    detector = NearestNeighborOOD().fit(X, y, groups, sources)
    test = SourceTest(draws=20).fit(X, sources, groups)
    same, _, _ = relu_features(40, 30, rng)
    assert test.test(same)["exchangeable"]
    # Another scanner: a few units that never fire in training fire a little. One by one most images
    # pass the cut-off; as a set they do not.
    near, _, _ = relu_features(40, 30, rng)
    near[:, 15:20] += 0.7
    assert detector.in_distribution(detector.score_samples(near)).mean() > 0.5
    verdict = test.test(near)
    assert verdict["exchangeable"] == [] and verdict["n"] == 40
    assert test.test(near[:5]) is None  # too few to test a set
    site = test.with_source("site-c", near, np.arange(40) // 2)  # calibrate: the site becomes a known source
    other, _, _ = relu_features(40, 30, rng)
    other[:, 15:20] += 0.7
    assert "site-c" in site.test(other)["exchangeable"] and "site-c" in site.describe()["sources"]
    accepted = detector.with_images(near)  # its images are then seen one by one too
    assert accepted.score_samples(other).mean() < detector.score_samples(other).mean()


def test_a_held_out_source_keeps_its_per_image_answers_beside_the_set_rule():
    """leave one source out: a shifted held-out set is not assessable as a whole, and the answers it
    would have had image by image are kept for measuring what the rule changed (bench/abstain.py)."""
    from types import SimpleNamespace

    from classifiers.records.evaluation import HeldOutSource
    from classifiers.workflows.cross_source import _answer

    rng = np.random.default_rng(3)
    X, y, groups = relu_features(400, 30, rng)
    sources = np.where(np.arange(400) < 200, "a", "b")
    near, y_near, groups_near = relu_features(40, 30, rng)
    near[:, 15:20] += 0.7  # one by one most pass the cut-off; as a set they do not
    oof = np.clip(0.5 + 0.4 * (2 * y - 1) * rng.uniform(0.2, 1, len(y)), 0, 1)
    p = np.clip(0.5 + 0.4 * (2 * y_near - 1), 0, 1)
    held = HeldOutSource("c", ["a", "b"], 400, {"images": 40}, 0.5, {}, y_near, p)
    _answer(held, SimpleNamespace(oof=oof), X, y, groups, sources, near, groups_near, 0.1, 50, 0)
    assert held.shift["exchangeable"] == [] and set(held.answers) == {"not assessable"}
    assert len(held.answers_per_image) == 40 and {"COVID", "NonCOVID"} & set(held.answers_per_image)
