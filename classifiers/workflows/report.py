"""report: gather what the HTML report shows (presentation/html_report.py draws it).

Labeled data is evaluated (metrics, plots); a plain folder of slices is predicted only.
Every row gets a thumbnail; the first ``heatmaps`` rows of the table (misclassified first)
get a heatmap. One loaded model serves the evaluation, the thumbnails and the explainer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from covidct_core.errors import DatasetError
from feature_extractor.imaging.dataset import LABEL_NAMES, load_datasets

from ..presentation.html_report import CaseRow, ReportContent, order_rows, plot_uris, write_html
from ..presentation.pictures import THUMB_SIDE
from ..records.prediction_record import PredictionRow
from .cross_source import leave_one_source_out
from .evaluate import evaluate_model
from .explain import ModelExplainer
from .model import LoadedModel
from .panels import slice_panels
from .predict import predict_folder


def collect(model: LoadedModel, data: str | Path | Sequence[str | Path], split: str = "test",
            heatmaps: int = 50, explain_method: str = "occlusion", n_boot: int = 2000,
            cv_by: str | None = None) -> ReportContent:
    """Everything the report shows. ``heatmaps``: explain the first N rows of the table.
    ``cv_by="source"``: leave one source out; each row is scored by the model that did not see
    its source (heatmaps explain the saved model, so there are none then)."""
    threshold = model.threshold
    paths = [data] if isinstance(data, (str, Path)) else list(data)
    if cv_by == "source":
        return _collect_cross_source(model, paths, n_boot)
    explainer = ModelExplainer(model, explain_method) if heatmaps else None  # refuse early
    try:
        dataset = load_datasets(paths)
    except DatasetError:
        if len(paths) > 1:
            raise
        dataset = None  # a plain folder of slices: predictions without metrics
    evaluation = None
    if dataset is not None:
        evaluation = evaluate_model(model, paths, split, n_boot)
        truth = {r.path: r for r in dataset.records}
        rows = [CaseRow(row, LABEL_NAMES[int(y)], truth[row.path].patient)
                for row, y in zip(evaluation.rows, evaluation.y)]
        rows += [CaseRow(PredictionRow(path=path, error=reason)) for path, reason in evaluation.errors.items()]
        notes = evaluation.certification
    else:
        predicted = predict_folder(model, paths[0])
        rows, notes = [CaseRow(r) for r in predicted.rows], predicted.certification
    sites = {r.path: r.prediction.site for r in rows}
    rows = order_rows(rows, threshold)
    content = ReportContent(model.card, model.path, "; ".join(map(str, paths)), threshold, rows, evaluation,
                            explain_method=explain_method if heatmaps else None, notes=notes)
    if evaluation is not None:
        content.plots = plot_uris(evaluation)
    _thumbnails(model, rows, explainer, heatmaps, sites)
    return content


def _collect_cross_source(model: LoadedModel, paths: Sequence[str | Path], n_boot: int) -> ReportContent:
    cross = leave_one_source_out(model, paths, n_boot)
    rows = [CaseRow(row, LABEL_NAMES[int(y)], r.patient, note=f"held out: {h.source}")
            for h in cross.held_out for r, row, y in zip(h.records, h.rows, h.y)]
    rows = order_rows(rows, model.threshold)
    content = ReportContent(model.card, model.path, "; ".join(map(str, paths)), model.threshold, rows,
                            plots=plot_uris(cross_source=cross), cross_source=cross)
    _thumbnails(model, rows, None, 0)
    return content


def _thumbnails(model: LoadedModel, rows: list[CaseRow], explainer: ModelExplainer | None, heatmaps: int,
                sites: dict[str, str | None] | None = None) -> None:
    """A thumbnail (and lesion map) for every readable row; a heatmap for the first ``heatmaps`` of
    them (``sites``: each image's site, for a harmonized model)."""
    readable = [r for r in rows if r.error is None]
    with model.context.progress("report images ", len(readable)) as update:
        for i, row in enumerate(readable):
            panels = slice_panels(model, row.path, overlay_side=THUMB_SIDE + 32,
                                  explainer=explainer if i < heatmaps else None, site=(sites or {}).get(row.path))
            if panels.error:
                row.prediction.error = panels.error
            row.thumbnail, row.heatmap, row.lesion_overlay, row.involved = (panels.image, panels.heatmap,
                                                                            panels.lesion, panels.involved)
            row.note = row.note or panels.note
            update(1)


def report_to_html(model: LoadedModel, data: str | Path | Sequence[str | Path], *, out: str | Path = "report.html",
                   split: str = "test", heatmaps: int = 50, explain_method: str = "occlusion", n_boot: int = 2000,
                   cv_by: str | None = None) -> tuple[Path, ReportContent]:
    """report: one self-contained HTML file (see presentation/html_report.py)."""
    content = collect(model, data, split, heatmaps, explain_method, n_boot, cv_by)
    return write_html(content, out), content
