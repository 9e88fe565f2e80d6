"""predict: a folder of images -> COVID probabilities, through the feature cache.

Every image file found gets one row; one that cannot be read or decoded gets its reason
in ``error`` and the others still go through. With an explanation method, each readable
image also gets a heatmap PNG.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from feature_extractor.dataset import LABEL_NAMES, load_unlabeled, printable_path
from feature_extractor.extract import ExtractionReport
from feature_extractor.run_context import RunContext

from .model import LoadedModel, load_model

CSV_COLUMNS = ("path", "p_covid", "label", "error")
HEATMAP_COLUMN = "heatmap"  # added when predictions are explained


@dataclass
class PredictionRow:
    path: str
    p_covid: float | None = None
    label: str | None = None
    error: str | None = None
    heatmap: str | None = None  # PNG written by --explain


@dataclass
class PredictionReport:
    rows: list[PredictionRow]
    model_path: Path
    threshold: float
    extractions: list[ExtractionReport] = field(default_factory=list)
    out: Path | None = None                  # the CSV, once written
    explained: str | None = None             # "N METHOD heatmaps in DIR/", once written

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r.error)

    @property
    def n_covid(self) -> int:
        return sum(1 for r in self.rows if r.label == LABEL_NAMES[1])

    @property
    def failures(self) -> dict[str, str]:
        return {r.path: r.error for r in self.rows if r.error}

    def summary(self) -> list[str]:
        n_ok = len(self.rows) - self.n_failed
        lines = [f"wrote {self.explained}"] if self.explained else []
        lines.append(f"{len(self.rows)} files: {self.n_covid} COVID, {n_ok - self.n_covid} NonCOVID, "
                     f"{self.n_failed} could not be read (model {self.model_path}, threshold {self.threshold})")
        if self.out:
            lines.append(f"wrote {self.out}")
        return lines


def predict_folder(model: LoadedModel, folder: str | Path) -> PredictionReport:
    """P(COVID) and a label for every image file under ``folder``, recursively."""
    dataset = load_unlabeled(folder)
    feats = model.features(dataset.records)
    threshold = model.threshold
    scores = {r.path: float(p) for r, p in zip(feats.good, model.predict_proba(feats.X))}
    rows = [PredictionRow(r.path, error=feats.errors[r.path]) if r.path in feats.errors
            else PredictionRow(r.path, scores[r.path], LABEL_NAMES[int(scores[r.path] >= threshold)])
            for r in feats.records]
    return PredictionReport(rows, model.path, threshold, feats.extractions)


def predict_and_write(folder: str | Path, out: str | Path = "predictions.csv",
                      model_path: str | Path | None = None, context: RunContext | None = None,
                      crop: str | None = None, explain_method: str | None = None,
                      explain_dir: str | Path | None = None) -> PredictionReport:
    """predict: predictions.csv for every image under ``folder`` (``crop``: confirm the
    model's crop); with ``explain_method``, a heatmap PNG per readable image in
    ``explain_dir`` (default: heatmaps/ beside ``out``) and a heatmap column."""
    model = load_model(model_path, context)
    model.check_crop(crop)
    explainer = None
    if explain_method:  # an unsuitable method fails before the long part
        from .explain import ModelExplainer

        explainer = ModelExplainer(model, explain_method)
    report = predict_folder(model, folder)
    if explainer is not None:
        from .explain import explain_records

        explain_dir = Path(explain_dir) if explain_dir else Path(out).parent / "heatmaps"
        readable = [r for r in report.rows if not r.error]
        written = explain_records(explainer, [r.path for r in readable], explain_dir, folder)
        for row in readable:
            row.heatmap = written.get(row.path)
        report.explained = f"{len(written)} {explain_method} heatmaps in {explain_dir}/"
    report.out = write_predictions_csv(report.rows, out)
    return report


def write_predictions_csv(rows: list[PredictionRow], out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    explained = any(r.heatmap for r in rows)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS + ((HEATMAP_COLUMN,) if explained else ()))
        for row in rows:
            writer.writerow([printable_path(row.path),
                             "" if row.p_covid is None else f"{row.p_covid:.6f}",
                             row.label or "", row.error or ""]
                            + ([printable_path(row.heatmap or "")] if explained else []))
    return out
