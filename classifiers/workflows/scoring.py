"""Scoring: a model's features of images in, their prediction rows out. The one place a
prediction row is filled in (predict, evaluate, studies, the report, the service, explain)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from feature_extractor.imaging.dataset import LABEL_NAMES, Record

from ..estimators.options import ANSWERS
from ..records.prediction_record import PredictionRow
from .model import LoadedModel, ModelFeatures

NOT_ASSESSABLE = ANSWERS[3]


def score_features(model: LoadedModel, feats: ModelFeatures, sets: dict[str, str] | None = None) -> list[PredictionRow]:
    """The prediction of each readable record of ``feats`` (in the order of ``feats.good``):
    everything the slice record holds. The one place a prediction row is filled in. ``sets``:
    path -> which set an image belongs to for the set-shift test (a study); default: its source."""
    threshold = model.threshold
    ood = model.ood_scores(feats)
    p_covid = model.predict_proba(feats.X)
    answers = model.answers(p_covid, None if ood is None else ood[1])
    notes = [None] * len(answers)
    if ood is not None and answers and answers[0] is not None:  # each source's images as a set
        sets = np.array([(sets or {}).get(r.path, r.source or "") for r in feats.good], dtype=object)
        for name in dict.fromkeys(sets):
            mine = np.flatnonzero(sets == name)
            test = model.ood.shift(ood[0][mine])
            if test is not None and test["shifted"]:
                note = (f"not assessable as a set: these {test['n']} images lie farther from the training images than "
                        f"any training source's do (Kolmogorov-Smirnov p={test['p_value']:.1e}); calibrate on this "
                        "site's labeled images")
                for i in mine:
                    answers[i], notes[i] = NOT_ASSESSABLE, note
    return prediction_rows(feats.good, p_covid, threshold, answers, notes, ood, feats.lesions, feats.sites)


def prediction_rows(records: Sequence[Record], p_covid: Sequence[float], threshold: float,
                    answers: Sequence[str | None] | None = None, notes: Sequence[str | None] | None = None,
                    ood: tuple[np.ndarray, np.ndarray] | None = None, lesions: Mapping[str, Any] | None = None,
                    sites: Sequence[str | None] | None = None) -> list[PredictionRow]:
    """Each record's prediction row from what was computed of it: P(COVID) (label at
    ``threshold``), its answer and note, (OOD score, in distribution), its LesionSummary (by path)
    and its site."""
    rows = []
    for i, (r, p) in enumerate(zip(records, p_covid)):
        row = PredictionRow(path=r.path, p_covid=float(p), label=LABEL_NAMES[int(p >= threshold)],
                            answer=None if answers is None else answers[i],
                            answer_note=None if notes is None else notes[i],
                            site=None if sites is None else sites[i])
        if ood is not None:
            row.ood_score, row.in_distribution = float(ood[0][i]), bool(ood[1][i])
        lesion = (lesions or {}).get(r.path)
        if lesion is not None:
            row.lesion, row.lesion_fraction, row.lung_note = lesion, lesion.lesion_fraction, lesion.lung_note
        rows.append(row)
    return rows
