"""The names the command line offers for estimator options, importable without scikit-learn
(the CLI reads them at start-up; the estimators themselves are imported when they run)."""

HARMONIZATIONS = ("none", "standardize")   # estimators/harmonize.py
CALIBRATION_METHODS = ("site", "sigmoid", "isotonic")  # workflows/calibrate.py: learn the site, or recalibrate
ANSWERS = ("COVID", "NonCOVID", "uncertain", "not assessable")  # workflows/answer_policy.py
COVID, NONCOVID, UNCERTAIN, NOT_ASSESSABLE = ANSWERS
FINDINGS = ("opacities", "clear", "uncertain", "not assessable")  # the lesion finding: answer_policy.py
DEFAULT_AGGREGATION = "mean"  # estimators/study_aggregation.py: of models fitted before it was chosen
DEFAULT_ERROR_RATE = 0.1  # the answers' error rate a model records at fit
DEFAULT_CONFIDENCE = 0.9  # the confidence of that bound (Learn-then-Test), recorded at fit
