"""evaluate --studies: study-level metrics against a CSV of study labels.

The labels CSV has columns ``study,label``: ``study`` is a study's name as predict --studies
writes it (its folder relative to the data folder, e.g. ``COVID/P001``), or its
StudyInstanceUID; ``label`` is 1/COVID or 0/NonCOVID. Metrics with 95% CIs resample
studies (one study is one patient's exam). Outputs: metrics.json, studies.csv, slices.csv.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidct_core.errors import DatasetError
from covidct_core.provenance import utc_now
from feature_extractor.imaging.dataset import parse_label

from ..records.metrics import METRICS, bootstrap_metrics
from .model import LoadedModel
from .studies import StudyPredictionReport, predict_studies, write_study_csvs


def read_study_labels(path: str | Path) -> dict[str, int]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DatasetError(f"cannot read study labels {path}: {exc.strerror or exc}") from None
    if not rows or not {"study", "label"} <= set(rows[0]):
        raise DatasetError(f"{path} needs the columns study,label")
    return {row["study"].strip(): parse_label(row["label"]) for row in rows}


@dataclass
class StudyEvaluation:
    predictions: StudyPredictionReport
    y: np.ndarray
    p: np.ndarray
    metrics: dict
    unlabeled: list[str]
    labels_without_study: list[str]

    def table(self) -> str:
        lines = [f"{len(self.y)} labeled studies ({int(self.y.sum())} COVID), {self.predictions.aggregation} of "
                 f"slice probabilities, threshold {self.predictions.threshold}",
                 f"{'metric':<12} value  95% CI (study bootstrap)"]
        for name in METRICS:
            m = self.metrics[name]
            lines.append(f"{name:<12} {m['value']:.3f}  [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
        if self.unlabeled:
            lines.append(f"{len(self.unlabeled)} studies have no label: {', '.join(self.unlabeled[:5])}")
        if self.labels_without_study:
            lines.append(f"{len(self.labels_without_study)} labels match no study: "
                         f"{', '.join(self.predictions.redact(n) for n in self.labels_without_study[:5])}")
        return "\n".join(lines)


def evaluate_studies(model: LoadedModel, folder: str | Path, labels_csv: str | Path, *,
                     report_dir: str | Path | None = None, n_boot: int = 2000, site: str | None = None,
                     max_slices: int | None = None, keep_identifiers: bool = False) -> tuple[StudyEvaluation, Path]:
    """evaluate --studies: study-level metrics of ``model`` on the studies under ``folder``."""
    labels = read_study_labels(labels_csv)
    report = predict_studies(model, folder, site, max_slices, keep_identifiers)
    y, p, matched, unlabeled = [], [], set(), []
    for result in report.results:
        names = [result.study.name, result.study.name.split("#")[0], result.study.identifiers.get("study_uid", "")]
        key = next((n for n in names if n in labels), None)
        if key is None:
            unlabeled.append(result.study.name)
            continue
        matched.add(key)
        if result.p_covid is not None:
            y.append(labels[key])
            p.append(result.p_covid)
    y_arr, p_arr = np.array(y, dtype=int), np.array(p, dtype=float)
    if len(y_arr) == 0:
        raise DatasetError(f"no study under {folder} matches a label in {labels_csv}")
    metrics = bootstrap_metrics(y_arr, p_arr, np.arange(len(y_arr)), report.threshold, n_boot)
    evaluation = StudyEvaluation(report, y_arr, p_arr, metrics, unlabeled, sorted(set(labels) - matched))
    out_dir = Path(report_dir) if report_dir else Path("reports") / f"{model.path.stem}-studies"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_study_csvs(report, out_dir / "slices.csv", out_dir / "studies.csv")
    (out_dir / "metrics.json").write_text(json.dumps({
        "created": utc_now(), "model": str(model.path), "model_sha256": model.card.model_sha256,
        "level": "study", "n_studies": len(y_arr), "n_covid": int(y_arr.sum()),
        "aggregation": report.aggregation, "threshold": report.threshold, "max_slices": max_slices,
        "metrics": metrics, "unlabeled_studies": len(unlabeled),
        "studies": [{"study": r.study.name, "p_covid": r.p_covid, "n_used": len(r.scored)} for r in report.results],
    }, indent=2, default=float))
    return evaluation, out_dir
