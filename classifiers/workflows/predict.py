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
from .answer_policy import certification_notes
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
    certification: list[str] = field(default_factory=list)  # why all of a source's answers are uncertain

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
        lines += [f"  note: {note}" for note in self.certification]
        lines += [f"site {site}: {note}" for site, note in self.site_notes.items()]
        if any(r.ood_score is not None for r in self.rows):
            lines.append(f"{self.n_out_of_distribution} of {n_ok} images look unlike the model's training "
                         "images (in_distribution false): their P(COVID) is not backed by its validation")
        if self.out:
            lines.append(f"wrote {self.out}")
        return lines


def predict_folder(model: LoadedModel, folder: str | Path, site: str | None = None,
                   on_map=None) -> PredictionReport:
    """P(COVID), a label and the out-of-distribution flag for every image file under
    ``folder``, recursively. ``site``: see LoadedModel.site_harmonizer (harmonized models); ``on_map``:
    called with each image's maps (LesionMapper.summaries)."""
    return predict_records(model, load_unlabeled(folder).records, site, on_map=on_map)


def predict_records(model: LoadedModel, records: list[Record], site: str | None = None,
                    sets: dict[str, str] | None = None, on_map=None) -> PredictionReport:
    """predict_folder for given records (a study's slices; ``sets``: see score_features)."""
    feats = model.features(records, site, on_map)
    scored = score(model, feats, sets)
    readable = {row.path: row for row in scored.rows}
    rows = [readable.get(r.path) or PredictionRow(path=r.path, error=feats.errors[r.path]) for r in feats.records]
    return PredictionReport(rows, model.path, model.threshold, feats.extractions, site_notes=feats.site_notes,
                            error_rate=model.error_rate, verdicts=scored.answers.verdicts,
                            harmonizer=feats.harmonizer,
                            certification=certification_notes(model.answer_parts, scored.answers.group))


def predict_and_write(model: LoadedModel, folder: str | Path, *, out: str | Path = "predictions.csv",
                      crop: str | None = None, explain_method: str | None = None,
                      explain_dir: str | Path | None = None, site: str | None = None,
                      lesion_maps: str | Path | None = None) -> PredictionReport:
    """predict: predictions.csv for every image under ``folder`` (``crop``: confirm the
    model's crop); with ``explain_method``, a heatmap PNG per readable image in
    ``explain_dir`` (default: heatmaps/ beside ``out``) and a heatmap column. ``site``: whose
    feature statistics standardize the images, for a harmonized model. ``lesion_maps``: a
    folder for each image's ``<stem>_lesion.png`` and ``<stem>_lungs.png`` (in the image's
    subfolder below ``folder``), for a model with a segmentation network."""
    model.check_crop(crop)
    writer = None if lesion_maps is None else MapWriter(model, folder, lesion_maps)
    explainer = None
    if explain_method:  # an unsuitable method fails before the long part
        from .explain import ModelExplainer

        explainer = ModelExplainer(model, explain_method)
    report = predict_folder(model, folder, site, on_map=writer)
    if explainer is not None:
        from .explain import explain_records

        explain_dir = Path(explain_dir) if explain_dir else Path(out).parent / "heatmaps"
        readable = [r for r in report.rows if not r.error]
        written = explain_records(explainer, [r.path for r in readable], explain_dir, folder,
                                  {r.path: r.site for r in readable}, report.harmonizer)
        for row in readable:
            row.heatmap = written.get(row.path)
        report.explained = f"{len(written)} {explain_method} heatmaps in {explain_dir}/"
    if writer is not None:
        for row in report.rows:
            row.lesion_map = writer.written.get(row.path)
        report.explained = ((report.explained + "; ") if report.explained else "") + \
            f"{sum(1 for r in report.rows if r.lesion_map)} lesion maps in {lesion_maps}/"
    report.out = write_predictions_csv(report.rows, out)
    return report


class MapWriter:
    """Writes each image's map files (presentation/lesion_maps.map_files) under ``out_dir``, in its folder
    relative to ``root``, as the one pass that maps it goes (an ``on_map`` of LesionMapper.summaries);
    ``written``: image path -> its binary lesion PNG."""

    def __init__(self, model: LoadedModel, root: str | Path, out_dir: str | Path):
        if model.lesions is None:
            raise ModelBundleError(f"--lesion-maps: {model.path} has no segmentation network; fit it with "
                                   "--lesion-data DIR")
        self.root, self.out_dir = Path(root), Path(out_dir)
        self.written: dict[str, str] = {}

    def __call__(self, path: str, segmentation) -> None:
        from ..presentation.lesion_maps import map_files

        try:
            where = Path(path).parent.relative_to(self.root)
        except ValueError:
            where = Path()
        lesion, _, _ = map_files(segmentation, self.out_dir / where, Path(path).stem)
        self.written[path] = str(lesion)


def write_predictions_csv(rows: list[PredictionRow], out: str | Path) -> Path:
    schema = record.SLICE
    return write_csv(out, schema.csv_header(rows), schema.csv_rows(rows))
