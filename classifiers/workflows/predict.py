"""predict: a folder of images -> COVID probabilities, through the feature cache.

Every image file found gets one row; one that cannot be read or decoded gets its reason
in ``error`` and the others still go through. With an explanation method, each readable
image also gets a heatmap PNG.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covidct_core.errors import ModelBundleError
from feature_extractor.extract import ExtractionReport
from feature_extractor.imaging.dataset import Record, load_unlabeled

from ..presentation.csv_files import write_csv
from ..records import prediction_record as record
from ..records.prediction_record import PredictionRow
from .model import LoadedModel
from .scoring import score


@dataclass
class PredictionReport:
    rows: list[PredictionRow]
    model_path: Path
    threshold: float
    extractions: list[ExtractionReport] = field(default_factory=list)
    out: Path | None = None                  # the CSV, once written
    explained: str | None = None             # "N METHOD heatmaps in DIR/", once written
    site_notes: dict[str, str] = field(default_factory=dict)
    error_rate: float | None = None
    verdicts: dict = field(default_factory=dict)   # set name -> the source test's SetVerdict (answer_policy.py)
    harmonizer: Any = None                   # the one that standardized the images (their batches too)

    @property
    def n_failed(self) -> int:
        return sum(1 for r in self.rows if r.error)

    @property
    def n_out_of_distribution(self) -> int:
        return sum(1 for r in self.rows if r.in_distribution is False)

    @property
    def failures(self) -> dict[str, str]:
        return {r.path: r.error for r in self.rows if r.error}

    def summary(self) -> list[str]:
        n_ok = len(self.rows) - self.n_failed
        lines = [f"wrote {self.explained}"] if self.explained else []
        lines.append(f"{len(self.rows)} files, answers: {record.answer_counts(self.rows, self.error_rate)}; "
                     f"{self.n_failed} could not be read (model {self.model_path})")
        lines += record.label_and_finding_lines(self.rows, self.threshold)
        lines += [f"site {site}: {note}" for site, note in self.site_notes.items()]
        if any(r.ood_score is not None for r in self.rows):
            lines.append(f"{self.n_out_of_distribution} of {n_ok} images look unlike the model's training "
                         "images (in_distribution false): their P(COVID) is not backed by its validation")
        if self.out:
            lines.append(f"wrote {self.out}")
        return lines


def predict_folder(model: LoadedModel, folder: str | Path, site: str | None = None) -> PredictionReport:
    """P(COVID), a label and the out-of-distribution flag for every image file under
    ``folder``, recursively. ``site``: see LoadedModel.site_harmonizer (harmonized models)."""
    return predict_records(model, load_unlabeled(folder).records, site)


def predict_records(model: LoadedModel, records: list[Record], site: str | None = None,
                    sets: dict[str, str] | None = None) -> PredictionReport:
    """predict_folder for given records (a study's slices; ``sets``: see score_features)."""
    feats = model.features(records, site)
    scored = score(model, feats, sets)
    readable = {row.path: row for row in scored.rows}
    rows = [readable.get(r.path) or PredictionRow(path=r.path, error=feats.errors[r.path]) for r in feats.records]
    return PredictionReport(rows, model.path, model.threshold, feats.extractions, site_notes=feats.site_notes,
                            error_rate=model.error_rate, verdicts=scored.answers.verdicts,
                            harmonizer=feats.harmonizer)


def predict_and_write(model: LoadedModel, folder: str | Path, *, out: str | Path = "predictions.csv",
                      crop: str | None = None, explain_method: str | None = None,
                      explain_dir: str | Path | None = None, site: str | None = None,
                      lesion_maps: str | Path | None = None) -> PredictionReport:
    """predict: predictions.csv for every image under ``folder`` (``crop``: confirm the
    model's crop); with ``explain_method``, a heatmap PNG per readable image in
    ``explain_dir`` (default: heatmaps/ beside ``out``) and a heatmap column. ``site``: whose
    feature statistics standardize the images, for a harmonized model. ``lesion_maps``: a
    folder for each image's ``<stem>_lesion.png`` and ``<stem>_lungs.png`` (in the image's
    subfolder below ``folder``), for a model with a lesion head."""
    model.check_crop(crop)
    if lesion_maps is not None and model.lesions is None:
        raise ModelBundleError(f"--lesion-maps: {model.path} has no lesion head; fit it with --lesion-data DIR")
    explainer = None
    if explain_method:  # an unsuitable method fails before the long part
        from .explain import ModelExplainer

        explainer = ModelExplainer(model, explain_method)
    report = predict_folder(model, folder, site)
    if explainer is not None:
        from .explain import explain_records

        explain_dir = Path(explain_dir) if explain_dir else Path(out).parent / "heatmaps"
        readable = [r for r in report.rows if not r.error]
        written = explain_records(explainer, [r.path for r in readable], explain_dir, folder,
                                  {r.path: r.site for r in readable}, report.harmonizer)
        for row in readable:
            row.heatmap = written.get(row.path)
        report.explained = f"{len(written)} {explain_method} heatmaps in {explain_dir}/"
    if lesion_maps is not None:
        write_lesion_maps(model, [r for r in report.rows if not r.error], folder, lesion_maps)
        report.explained = ((report.explained + "; ") if report.explained else "") + \
            f"{sum(1 for r in report.rows if r.lesion_map)} lesion maps in {lesion_maps}/"
    report.out = write_predictions_csv(report.rows, out)
    return report


def write_lesion_maps(model: LoadedModel, rows: list[PredictionRow], root: str | Path, out_dir: str | Path) -> None:
    """Each row's lesion and lung PNGs under ``out_dir``, in its folder relative to ``root``."""
    from feature_extractor.imaging.decode import ImageDecodeError

    from ..presentation.lesion_maps import map_files

    with model.context.progress("lesion maps   ", len(rows)) as progress:
        for row in rows:
            try:
                where = Path(row.path).parent.relative_to(root)
            except ValueError:
                where = Path()
            try:
                lesion, _, _ = map_files(model.lesions.lesion_map(row.path), Path(out_dir) / where, Path(row.path).stem)
                row.lesion_map = str(lesion)
            except (ImageDecodeError, OSError):
                pass  # its row already carries the reason it could not be scored
            progress(1)


def write_predictions_csv(rows: list[PredictionRow], out: str | Path) -> Path:
    schema = record.SLICE
    return write_csv(out, schema.csv_header(rows), schema.csv_rows(rows))
