"""Classifiers on cached deep features, in three layers:

- ``estimators/``: scikit-learn estimators (the classifier registry, patient-grouped search,
  the stacked ensemble, thresholds); plain arrays in, no files;
- ``workflows/``: the commands' work (fit, predict, evaluate, explain, report) from data and
  caches to saved models and results;
- ``presentation/``: how results are shown (plots, metrics.json and report.md, heatmap
  PNGs, the HTML report).

Nothing here imports TensorFlow unless features must be extracted (images not yet cached).
"""
