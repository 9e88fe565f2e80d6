"""The names the command line offers for estimator options, importable without scikit-learn
(the CLI reads them at start-up; the estimators themselves are imported when they run)."""

HARMONIZATIONS = ("none", "standardize")   # estimators/harmonize.py
CALIBRATION_METHODS = ("sigmoid", "isotonic")  # estimators/recalibration.py
LESION_HEADS = ("logreg", "sgd", "xgboost")     # estimators/lesion_head.py: the default candidates
ANSWERS = ("COVID", "NonCOVID", "uncertain", "not assessable")  # estimators/conformal.py
DEFAULT_ERROR_RATE = 0.1  # the conformal answers' error rate a model records at fit
