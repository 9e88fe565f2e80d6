"""predict --studies: whole studies in, one answer per study out.

Each study (feature_extractor/imaging/studies.py) is reduced to its slices inside the lungs (at most
``max_slices``), those are scored like any image (cache, model, OOD flag), and their
probabilities are pooled by the model's study aggregation (chosen at fit time by
patient-grouped CV; mean for older models). Two CSVs: the slices (every slice of each chosen
series, with why one was not scored) and studies.csv. Patient identifiers from the DICOM
headers are removed from every path and name written, unless ``keep_identifiers``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from covidct_core.errors import ModelBundleError
from feature_extractor.imaging.dataset import Record, printable_path
from feature_extractor.imaging.studies import Redactor, find_studies, slices_to_score

from ..estimators.study_aggregation import aggregate
from ..presentation.csv_files import write_csv
from ..records import prediction_record as record
from ..records.study_results import StudyResult, StudySlice
from .model import LoadedModel
from .predict import predict_records
from .scoring import label_of
from .answer_policy import answer_study, study_finding, study_in_distribution

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
        for result in self.results:
            for warning in result.study.warnings:
                lines.append(f"  warning: {result.study.name}: {warning}")
        if self.keep_identifiers:
            lines.append("warning: --keep-identifiers: study and series UIDs and file names are written as they are")
        if self.out:
            lines.append(f"wrote {self.out} and {self.studies_out}")
        return lines


def predict_studies(model: LoadedModel, folder: str | Path, site: str | None = None,
                    max_slices: int | None = None, keep_identifiers: bool = False) -> StudyPredictionReport:
    """One P(COVID) per study under ``folder`` (see the module docstring)."""
    scan = find_studies(folder)
    redact = scan.redact if not keep_identifiers else Redactor()
    plans = []
    for study in scan.studies:
        used, not_used = slices_to_score(study, max_slices)
        plans.append((study, used, not_used))
    records = [Record(path) for _, used, _ in plans for path in used]
    sets = {path: study.name for study, used, _ in plans for path in used}  # each study's slices are one set
    predicted = predict_records(model, records, site, sets) if records else None
    predictions = {row.path: row for row in predicted.rows} if predicted else {}
    verdicts = predicted.verdicts if predicted else {}
    method = model.card.aggregation
    threshold = model.threshold
    results = []
    for study, used, not_used in plans:
        rows = [(i + 1, predictions.get(path), not_used.get(path)) for i, path in enumerate(study.slices)]
        result = StudyResult(study=study, rows=rows)
        scored = result.scored
        if scored:
            areas = [r.lesion.lesion_area if r.lesion is not None else 0.0 for _, r in scored]
            result.p_covid = aggregate([r.p_covid for _, r in scored], method, areas)
            result.label = label_of(result.p_covid, threshold)
            result.in_distribution = study_in_distribution([r.in_distribution for _, r in scored])
            result.answer, result.answer_note = answer_study(model.answer_parts, result.p_covid,
                                                             verdicts.get(study.name), result.in_distribution)
            result.finding, result.opacity_share = study_finding([r.finding for _, r in scored], model.error_rate)
        elif not study.slices:
            reasons = sorted(set(study.errors.values()) - {"no CT image series in the study"})
            result.error = "no CT image series in the study" + (f" ({'; '.join(reasons)})" if reasons else "")
        elif not used:
            result.error = "no slice inside the lungs"
        else:
            result.error = "no slice could be decoded"
        results.append(result)
    return StudyPredictionReport(results, model.path, threshold, method, redact, scan.unassigned, keep_identifiers,
                                 error_rate=model.error_rate)


def study_slices(result: StudyResult) -> list[StudySlice]:
    """Every slice of a study's chosen series, then the study's files that are not among them."""
    name = result.study.name
    out = [StudySlice(name, number, result.study.slices[number - 1], row, note)
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
                              lesion_maps: str | Path | None = None) -> StudyPredictionReport:
    """predict --studies: the slice CSV at ``out`` and studies.csv beside it (or at ``studies_out``);
    ``lesion_maps``: a folder for each study's maps (write_study_maps)."""
    if lesion_maps is not None and model.lesions is None:
        raise ModelBundleError(f"--lesion-maps: {model.path} has no lesion head; fit it with --lesion-data DIR")
    report = predict_studies(model, folder, site, max_slices, keep_identifiers)
    if lesion_maps is not None:
        write_study_maps(model, report, lesion_maps)
    write_study_csvs(report, out, studies_out or Path(out).with_name("studies.csv"))
    return report


def write_study_maps(model: LoadedModel, report: StudyPredictionReport, out_dir: str | Path) -> None:
    """Each study's scored slices' maps (``<study>/<slice number>_lesion.png`` and the others of
    presentation/lesion_maps.map_files) and, for a DICOM study, its NIfTI label volume
    ``<study>.nii.gz`` (presentation/label_volumes.py); names redacted unless identifiers are kept."""
    import pydicom

    from ..presentation.label_volumes import label_slice, write_label_volume
    from ..presentation.lesion_maps import map_files

    out_dir = Path(out_dir)
    scored = sum(len(r.scored) for r in report.results)
    with model.context.progress("lesion maps   ", scored) as progress:
        for result in report.results:
            if not result.scored:
                continue
            name = report.redact(result.study.name).replace("/", "__").replace("#", "-")
            labels: list = [None] * len(result.study.slices)
            for number, row in result.scored:
                lesion_map = model.lesions.lesion_map(row.path)
                lesion, _, _ = map_files(lesion_map, out_dir / name, f"{number:04d}")
                row.lesion_map = str(lesion)
                labels[number - 1] = label_slice(lesion_map)
                progress(1)
            if result.study.kind == "dicom":
                headers = [pydicom.dcmread(p, stop_before_pixels=True, force=True) for p in result.study.slices]
                uid = result.study.identifiers.get("study_uid", "") if report.keep_identifiers else ""
                write_label_volume(out_dir / f"{name}.nii.gz", labels, headers,
                                   f"study {uid}" if uid else "")


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
