"""Scoring: a model's features of images in, their prediction rows out. The one place a
prediction row is filled in (predict, evaluate, studies, the report, the service, explain); what
each image is answered is the answer policy's (answer_policy.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from feature_extractor.imaging.dataset import LABEL_NAMES, Record

from ..records.prediction_record import PredictionRow
from .answer_policy import Answers, answer_images, findings
from .model import LoadedModel, ModelFeatures


def label_of(p_covid: float, threshold: float) -> str:
    """The ``label`` column: COVID where P(COVID) reaches the model's threshold, else NonCOVID."""
    return LABEL_NAMES[int(p_covid >= threshold)]


@dataclass
class Scored:
    rows: list[PredictionRow]     # in the order of feats.readable
    answers: Answers


def score(model: LoadedModel, feats: ModelFeatures, sets: dict[str, str] | None = None) -> Scored:
    """The prediction of each readable record of ``feats`` (in the order of ``feats.readable``), and the
    answer policy's account of it. ``sets``: path -> which set an image belongs to for the source
    test (a study); default: its source (none: the whole folder)."""
    parts = model.answer_parts
    ood = model.ood_scores(feats)
    names = [(sets or {}).get(r.path, r.source or "") for r in feats.readable]
    answers = answer_images(parts, model.predict_proba(feats.X), feats.raw, names,
                            None if ood is None else ood[1], None if ood is None else ood[0],
                            lambda rows: model.site_inputs(feats, rows))
    finding = findings(parts, [feats.lesions.get(r.path) for r in feats.readable])
    rows = prediction_rows(feats.readable, answers.p_covid, model.threshold, answers.answer, answers.note, ood,
                           feats.lesions, feats.sites, finding)
    return Scored(rows, answers)


def score_features(model: LoadedModel, feats: ModelFeatures, sets: dict[str, str] | None = None) -> list[PredictionRow]:
    """The prediction rows of ``score``."""
    return score(model, feats, sets).rows


def prediction_rows(records: Sequence[Record], p_covid: Sequence[float], threshold: float,
                    answers: Sequence[str | None] | None = None, notes: Sequence[str | None] | None = None,
                    ood: tuple[np.ndarray, np.ndarray] | None = None, lesions: Mapping[str, Any] | None = None,
                    sites: Sequence[str | None] | None = None,
                    finding: Sequence[str | None] | None = None) -> list[PredictionRow]:
    """Each record's prediction row from what was computed of it: P(COVID) (label at
    ``threshold``), its answer and note, (OOD score, in distribution), its LesionSummary (by path),
    its site and its finding."""
    rows = []
    for i, (r, p) in enumerate(zip(records, p_covid)):
        row = PredictionRow(path=r.path, p_covid=float(p), label=label_of(p, threshold),
                            answer=None if answers is None else answers[i],
                            answer_note=None if notes is None else notes[i],
                            site=None if sites is None else sites[i], finding=None if finding is None else finding[i])
        if ood is not None:
            row.ood_score, row.in_distribution = float(ood[0][i]), bool(ood[1][i])
        lesion = (lesions or {}).get(r.path)
        if lesion is not None:
            row.lesion, row.lesion_fraction, row.lung_note = lesion, lesion.lesion_fraction, lesion.lung_note
        rows.append(row)
    return rows
