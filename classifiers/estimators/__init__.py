"""Estimators: the classifier registry, patient-grouped search, the stacked ensemble and
decision thresholds. Plain scikit-learn estimators; nothing here reads files."""
