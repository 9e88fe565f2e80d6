"""predict --studies: whole studies in, one answer per study out.

Each study (feature_extractor/imaging/studies.py) is reduced to its slices inside the lungs (at most
``max_slices``), those are scored like any image (cache, model, OOD flag), and their
probabilities are pooled by the model's study aggregation (chosen at fit time by
patient-grouped CV; mean for older models). Two CSVs: the slices (every slice of each chosen
series, with why one was not scored) and studies.csv. Patient identifiers from the DICOM
headers are removed from every path and name written, unless ``keep_identifiers``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from covidct_core.errors import ModelBundleError
from feature_extractor.imaging.dataset import Record, printable_path
from feature_extractor.imaging.slice_choice import slices_to_score
from feature_extractor.imaging.studies import Redactor, find_studies

from ..estimators.study_aggregation import aggregate
from ..presentation.csv_files import write_csv
from ..records import prediction_record as record
from ..records.study_results import StudyResult, StudySlice
from .model import LoadedModel
from .predict import predict_records
from .scoring import label_of
from .answer_policy import (MIN_LUNG_SHARE_OF_SLICE, NOT_ASSESSABLE, answer_study, certification_notes, study_finding,
                            study_group, study_in_distribution)

IDENTIFIER_COLUMNS = ("study_uid", "series_uid")


@dataclass
class StudyPredictionReport:
    results: list[StudyResult]
    model_path: Path
    threshold: float
    aggregation: str
    redact: Redactor
    unassigned: dict[str, str] = field(default_factory=dict)
    keep_identifiers: bool = False
    out: Path | None = None
    studies_out: Path | None = None
    error_rate: float | None = None
    certification: list[str] = field(default_factory=list)   # why all of a group's study answers are uncertain

    @property
    def failures(self) -> dict[str, str]:
        """Slices that could not be read or decoded (paths redacted)."""
        out = {self.redact(printable_path(p)): r for p, r in self.unassigned.items()}
        for result in self.results:
            for _, row, _ in result.rows:
                if row is not None and row.error:
                    out[self.redact(printable_path(row.path))] = row.error
        return out

    @property
    def n_failed(self) -> int:
        return len(self.failures)

    def summary(self) -> list[str]:
        n_scored = sum(1 for r in self.results if r.p_covid is not None)
        lines = [f"{len(self.results)} studies, answers: {record.answer_counts(self.results, self.error_rate)}; "
                 f"{len(self.results) - n_scored} without a scored slice (model {self.model_path}, "
                 f"{self.aggregation} of slice probabilities)"]
        lines += record.label_and_finding_lines(self.results, self.threshold)
        lines += [f"  note: {note}" for note in self.certification]
        for result in self.results:
            for warning in result.study.warnings:
                lines.append(f"  warning: {result.study.name}: {warning}")
        if self.keep_identifiers:
            lines.append("warning: --keep-identifiers: study and series UIDs and file names are written as they are")
        if self.out:
            lines.append(f"wrote {self.out} and {self.studies_out}")
        return lines


def predict_studies(model: LoadedModel, folder: str | Path, site: str | None = None,
                    max_slices: int | None = None, keep_identifiers: bool = False,
                    lesion_maps: str | Path | None = None, seg: bool = False) -> StudyPredictionReport:
    """One P(COVID) per study under ``folder`` (see the module docstring); ``lesion_maps``: a folder for each
    study's maps and label volume (``seg``: and DICOM SEG), made by the pass that maps its slices
    (StudyMapWriter)."""
    scan = find_studies(folder)
    redact = scan.redact if not keep_identifiers else Redactor()
    writer = None if lesion_maps is None else StudyMapWriter(model, lesion_maps, redact, keep_identifiers, seg)
    plans = [plan_study(model, study, max_slices, writer) for study in scan.studies]
    records = [Record(path) for _, used, _ in plans for path in used]
    sets = {path: study.name for study, used, _ in plans for path in used}  # each study's slices are one set
    predicted = predict_records(model, records, site, sets) if records else None
    predictions = {row.path: row for row in predicted.rows} if predicted else {}
    if writer is not None:
        for row in predictions.values():
            row.lesion_map = writer.written.get(row.path)
    verdicts = predicted.verdicts if predicted else {}
    results = [study_result(model, study, used, not_used, predictions, verdicts.get(study.name))
               for study, used, not_used in plans]
    return StudyPredictionReport(results, model.path, model.threshold, model.card.aggregation, redact, scan.unassigned,
                                 keep_identifiers, error_rate=model.error_rate,
                                 certification=study_certification(model, results, verdicts))


def study_certification(model: LoadedModel, results: list, verdicts: dict) -> list[str]:
    """Why all of a group's study answers are uncertain, when no study threshold certifies the rate."""
    parts = model.answer_parts
    if parts.study_thresholds is None:
        return []
    groups = [study_group(parts, verdicts.get(r.study.name)) for r in results if r.answer is not None
              and r.answer != NOT_ASSESSABLE]
    return certification_notes(dataclasses.replace(parts, thresholds=parts.study_thresholds), groups, "studies")


def plan_study(model: LoadedModel, study, max_slices: int | None, writer: "StudyMapWriter | None"
               ) -> tuple[object, list[str], dict[str, str]]:
    """The study's slices to score, and why each other one is not: outside the lungs by the model's
    segmentation network (every slice mapped once; ``writer`` gets the maps), else by Hounsfield units."""
    outside = None
    if model.lesions is not None and study.slices:
        on_map = None if writer is None else writer.start(study)
        summaries = model.lesions.summaries([Record(p) for p in study.slices], on_map)
        outside = {p: f"outside the lungs (lungs {s.lung_share_of_slice:.1%} of the slice)"
                   for p, s in summaries.items()
                   if not isinstance(s, str) and s.lung_share_of_slice < MIN_LUNG_SHARE_OF_SLICE}
        if writer is not None:
            writer.finish(study)
    return (study, *slices_to_score(study, max_slices, outside))


def study_result(model: LoadedModel, study, used: list[str], not_used: dict[str, str], predictions: dict,
                 verdict) -> StudyResult:
    """A study's answer, finding and numbers from its slices' predictions (answer_policy.py's rules)."""
    rows = [(i + 1, predictions.get(path), not_used.get(path)) for i, path in enumerate(study.slices)]
    result = StudyResult(study=study, rows=rows)
    scored = result.scored
    if scored:
        areas = [r.lesion.lesion_share_of_slice if r.lesion is not None else 0.0 for _, r in scored]
        result.p_covid = aggregate([r.p_covid for _, r in scored], model.card.aggregation, areas)
        result.label = label_of(result.p_covid, model.threshold)
        result.in_distribution = study_in_distribution([r.in_distribution for _, r in scored])
        result.answer, result.answer_note = answer_study(model.answer_parts, result.p_covid, verdict,
                                                         result.in_distribution)
        result.finding, result.opacity_share = study_finding([r.finding for _, r in scored], model.error_rate)
    elif not study.slices:
        reasons = sorted(set(study.errors.values()) - {"no CT image series in the study"})
        result.error = "no CT image series in the study" + (f" ({'; '.join(reasons)})" if reasons else "")
    elif not used:
        result.error = "no slice inside the lungs"
    else:
        result.error = "no slice could be decoded"
    return result


def study_slices(result: StudyResult) -> list[StudySlice]:
    """Every slice of a study's chosen series, then the study's files that are not among them."""
    name, study = result.study.name, result.study
    out = [StudySlice(name, number, study.slices[number - 1], row, note,
                      study.place(study.slices[number - 1]).instance_number, study.place(study.slices[number - 1]).z_mm)
           for number, row, note in result.rows]
    out += [StudySlice(name, None, path, None, reason) for path, reason in result.study.errors.items() if path]
    return out


def write_study_csvs(report: StudyPredictionReport, out: str | Path, studies_out: str | Path) -> None:
    slices = [s for result in report.results for s in study_slices(result)]
    schema = record.study_slice()
    report.out = write_csv(out, schema.csv_header(slices), schema.csv_rows(slices, report.redact))
    keep = report.keep_identifiers
    header = record.STUDY.csv_header(report.results) + (list(IDENTIFIER_COLUMNS) if keep else [])
    rows = [cells + ([result.study.identifiers.get(c, "") for c in IDENTIFIER_COLUMNS] if keep else [])
            for result, cells in zip(report.results, record.STUDY.csv_rows(report.results))]
    report.studies_out = write_csv(studies_out, header, rows)


def predict_studies_and_write(model: LoadedModel, folder: str | Path, *, out: str | Path = "predictions.csv",
                              studies_out: str | Path | None = None, site: str | None = None,
                              max_slices: int | None = None, keep_identifiers: bool = False,
                              lesion_maps: str | Path | None = None, seg: bool = False) -> StudyPredictionReport:
    """predict --studies: the slice CSV at ``out`` and studies.csv beside it (or at ``studies_out``);
    ``lesion_maps``: a folder for each study's maps (StudyMapWriter; ``seg``: with its DICOM SEG)."""
    report = predict_studies(model, folder, site, max_slices, keep_identifiers, lesion_maps, seg)
    write_study_csvs(report, out, studies_out or Path(out).with_name("studies.csv"))
    return report


def map_name(redact: Redactor, study) -> str:
    """The name of a study's map folder and volume files: its name, identifiers removed, folders flattened."""
    return redact(study.name).replace("/", "__").replace("#", "-")


class StudyMapWriter:
    """Each study's maps as its slices are mapped: ``<study>/<slice>_lesion.png`` and the others of
    presentation/lesion_maps.map_files (``<slice>``: the InstanceNumber, else the place in the series), and for
    a DICOM study its NIfTI label volume ``<study>.nii.gz`` with its label tables (presentation/label_volumes.py)
    and, with ``seg``, its DICOM SEG ``<study>.seg.dcm`` (presentation/dicom_seg.py); names redacted unless
    identifiers are kept. A series no regular grid holds gets no volume outputs: a warning of the study says
    why. ``written``: slice path -> its binary lesion PNG."""

    def __init__(self, model: LoadedModel, out_dir: str | Path, redact: Redactor, keep_identifiers: bool,
                 seg: bool = False):
        if model.lesions is None:
            raise ModelBundleError(f"--lesion-maps: {model.path} has no segmentation network; fit it with "
                                   "--lesion-data DIR")
        self.model, self.out_dir, self.redact = model, Path(out_dir), redact
        self.keep_identifiers, self.seg = keep_identifiers, seg
        self.written: dict[str, str] = {}
        self._labels: dict[str, object] = {}

    def name(self, study) -> str:
        return map_name(self.redact, study)

    def start(self, study):
        """The ``on_map`` of one study's slices."""
        from ..presentation.label_volumes import label_slice
        from ..presentation.lesion_maps import map_files

        stem = {path: f"{study.place(path).instance_number or i + 1:04d}" for i, path in enumerate(study.slices)}
        self._labels = {}

        def on_map(path: str, segmentation) -> None:
            lesion, _, _ = map_files(segmentation, self.out_dir / self.name(study), stem[path])
            self.written[path] = str(lesion)
            self._labels[path] = label_slice(segmentation)
        return on_map

    def finish(self, study) -> None:
        """The study's volume outputs (a DICOM series), from its slices' labels in series order."""
        import pydicom

        from feature_extractor.imaging.geometry import GeometryError

        from ..presentation.label_volumes import write_label_volume

        if study.kind != "dicom" or not self._labels:
            return
        headers = [pydicom.dcmread(p, stop_before_pixels=True, force=True) for p in study.slices]
        labels = [self._labels.get(p) for p in study.slices]
        uid = study.identifiers.get("study_uid", "") if self.keep_identifiers else ""
        try:
            write_label_volume(self.out_dir / f"{self.name(study)}.nii.gz", labels, headers, f"study {uid}" if uid else "")
        except GeometryError as exc:
            study.warnings.append(f"no label volume{' or DICOM SEG' if self.seg else ''}: {exc}")
            return
        if self.seg:
            from importlib.metadata import version

            from ..presentation.dicom_seg import SegRefused, write_seg

            try:
                write_seg(self.out_dir / f"{self.name(study)}.seg.dcm", study.slices, labels, self.model.path.name,
                          version("covidct-features"))
            except SegRefused as exc:
                study.warnings.append(f"no DICOM SEG: {exc}")


def study_report_to_html(model: LoadedModel, folder: str | Path, *, out: str | Path = "studies.html",
                         site: str | None = None, max_slices: int | None = None, explain_method: str = "occlusion",
                         heatmaps: bool = True) -> tuple[StudyPredictionReport, Path]:
    """report --studies: every study with its answer and a strip of its top slices (heatmaps)."""
    from ..presentation.study_report import StudyStrip, write_study_html
    from .explain import ModelExplainer
    from .panels import slice_panels

    report = predict_studies(model, folder, site, max_slices)
    explainer = ModelExplainer(model, explain_method) if heatmaps else None
    strips = []
    for result in report.results:
        strip = StudyStrip(result, report.redact(result.study.name))
        for number, row in result.top():
            panels = slice_panels(model, row.path, side=192, explainer=explainer, site=row.site)
            strip.slices.append((number, row, panels.heatmap or panels.image, panels.lesion))
        strips.append(strip)
    path = write_study_html(strips, out, str(model.path), report.aggregation, report.threshold,
                            explain_method if heatmaps else "none")
    return report, path
