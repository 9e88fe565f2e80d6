"""The prediction record: every field a prediction carries, declared once.

A field is declared here with its name, type, help and place in the order; everything that
shows predictions is made from these declarations: the CSV writers (predictions.csv, the
study CSVs), the JSON API's schema (service/app.py), the web page (it renders the fields the
API lists), the HTML report's table and the ``--out`` help. Adding a field is one entry here
(and computing its value where the prediction is made).

Three records: ``SLICE`` (one image: predictions.csv, the API's images), ``STUDY`` (one study:
studies.csv, the API's studies) and ``study_slice()`` (a study's slice: the slice CSV of
``predict --studies``, which is ``SLICE`` plus where the slice sits in its study).
"""
from __future__ import annotations

from feature_extractor.imaging.dataset import COVID_LABEL, LABEL_NAMES, NONCOVID_LABEL

from ..estimators.options import ANSWERS, FINDINGS
from .fields import RecordField, RecordSchema
from .severity import LUNGS, ZONES, zone_name

LABELS = (LABEL_NAMES[COVID_LABEL], LABEL_NAMES[NONCOVID_LABEL])  # the label column's values

SLICE = RecordSchema("slice", (
    RecordField("path", str, "The image file.", path=True, api=False, label="File"),  # the API gives the uploaded name
    RecordField("answer", str, "COVID or NonCOVID where the wrong share among such answers stays under --error-rate "
                "(for the source the image's set is recognised as); uncertain where it does not; not assessable "
                "where the image, or its set, is unlike every source the model knows.", choices=ANSWERS,
                label="Answer"),
    RecordField("finding", str, "The lesion finding, which transfers to new hospitals: opacities or clear where the "
                "wrong share among such findings stays under --error-rate (from the share of lung involved); "
                "uncertain between; not assessable where no lungs are found (models with a segmentation network).",
                choices=FINDINGS, label="Lesion finding"),
    RecordField("answer_note", str, "The rule that decided the answer: the source test's verdict on the image's set, "
                "the thresholds used, or why it is not assessable.", label="Why this answer"),
    RecordField("p_covid", float, "The model's probability of COVID-19 (a detail: see the answer).", label="P(COVID)"),
    RecordField("label", str, "COVID when p_covid reaches the model's threshold, else NonCOVID; kept for "
                "scripts that read it.", choices=LABELS, label="Label at the model's threshold"),
    RecordField("ood_score", float, "How unlike the model's training images the image is (cosine distance "
                "to its 5th nearest training image).", digits=5, label="Unlike the training images (score)"),
    RecordField("in_distribution", bool, "False: the image lies far from the training images; its "
                "p_covid is not backed by the model's validation.", label="Like the training images"),
    RecordField("lesion_fraction", float, "The lesion's share of the lungs: the segmentation network's lesion (its "
                "parts of at least the minimum area) over its lungs (models with a segmentation network; empty without "
                "one or without lung in the slice).", digits=4,
                label="Lesion, share of the lungs", unit="%", scale=100),
    RecordField("lung_share_of_slice", float, "The lungs' share of the slice (models with a segmentation network). "
                "Slices near the apex and base show little lung: read lesion_fraction beside it.", digits=4,
                get=lambda row: None if row.lesion is None else row.lesion.lung_share_of_slice,
                label="Lungs, share of the slice", unit="%", scale=100),
    RecordField("lesion_area_mm2", float, "The lesion's area in mm² (where the file gives its pixel spacing).",
                digits=1, get=lambda row: None if row.lesion is None else row.lesion.lesion_area_mm2,
                label="Lesion area", unit="mm²"),
    RecordField("lung_note", str, "What to know about the slice's lungs: none found, or right and left taken from "
                "the image's side.", optional=True, label="Lungs"),
    RecordField("error", str, "Why the file could not be scored (unreadable, not an image, ...).", label="Error"),
    RecordField("heatmap", str, "The PNG written by --explain for this image.", optional=True, api=False,
                path=True, label="Heatmap file"),
    RecordField("lesion_map", str, "The binary lesion map written by --lesion-maps (0 / 255; its probabilities and "
                "lungs beside it).", optional=True, api=False, path=True, label="Lesion map file"),
))

STUDY = RecordSchema("study", (
    RecordField("study", str, "The study: its folder below the input folder (identifiers removed).",
                get=lambda r: r.study.name, label="Study"),
    RecordField("answer", str, "The study's answer: COVID or NonCOVID where the wrong share among study answers stays "
                "under --error-rate (thresholds calibrated on the training patients with several slices), uncertain, "
                "or not assessable (its slices as a set unlike every source the model knows, or most of them unlike "
                "the training images).", choices=ANSWERS, label="Answer"),
    RecordField("finding", str, "The study's lesion finding: opacities when more of its slices have opacities than "
                "the error rate explains, clear when none has and most are clear, else uncertain; not assessable "
                "without a slice with lungs.", choices=FINDINGS, label="Lesion finding"),
    RecordField("opacity_share", float, "The share of the study's assessable slices whose finding is opacities.",
                digits=4, label="Slices with opacities", unit="%", scale=100),
    RecordField("answer_note", str, "The rule that decided the study's answer.", label="Why this answer"),
    RecordField("series", str, "The series used: plane, slice thickness, kernel, files used of the study's.",
                get=lambda r: r.study.series, label="Series"),
    RecordField("n_slices", int, "Slices of the series used.", get=lambda r: len(r.study.slices),
                label="Slices in the series"),
    RecordField("n_used", int, "Slices scored (inside the lungs; --max-slices).", get=lambda r: len(r.scored),
                label="Slices scored"),
    RecordField("p_covid", float, "The study's probability of COVID-19: its slices' pooled by the model's "
                "study aggregation.", label="P(COVID)"),
    RecordField("label", str, "COVID when the study's p_covid reaches the threshold, else NonCOVID.",
                choices=LABELS, label="Label at the model's threshold"),
    RecordField("opacity_percent", float, "The percentage of the lungs' volume with opacity (the lesion), over the "
                "scored slices (models with a segmentation network).", digits=2,
                get=lambda r: _severity(r, "opacity_percent"), label="Opacity, both lungs", unit="%"),
    RecordField("opacity_right", float, "The same of the right lung.", digits=2,
                get=lambda r: _severity(r, "opacity_right"), label="Opacity, right lung", unit="%"),
    RecordField("opacity_left", float, "The same of the left lung.", digits=2,
                get=lambda r: _severity(r, "opacity_left"),
                label="Opacity, left lung", unit="%"),
    *(RecordField(f"opacity_{side}_{zone}_third", float, f"The percentage of opacity of the {side} lung's {zone} third "
                  "(along its extent in the series).", digits=2, label=f"Opacity, {side} lung, {zone} third", unit="%",
                  get=lambda r, name=zone_name(side, zone): None if r.severity is None else r.severity.zones[name])
      for side in LUNGS for zone in ZONES),
    RecordField("severity_score", int, "The CT severity score, 0-30: each lung's upper, middle and lower third (along "
                "its extent in the series) scored 0-5 by its percentage of opacity (0 none, 1 under 5, 2 to 25, 3 to "
                "50, 4 to 75, 5 above) and summed.", get=lambda r: _severity(r, "severity_score"),
                label="CT severity score (0-30)"),
    RecordField("zone_scores", str, "Each zone's score, right lung then left, upper to lower third.",
                get=lambda r: None if r.severity is None else r.severity.zone_text(), label="Zone scores (0-5)"),
    RecordField("top_slices", str, "The highest-scoring slices: InstanceNumber (else place in the series), z in mm, "
                "p_covid.", get=lambda r: r.top_slices(), api=False,
                label="Slices with the highest P(COVID)"),  # the API lists them with their pictures
    RecordField("top_lesion_slices", str, "The slices with the largest share of lung involved: InstanceNumber (else "
                "place in the series), z in mm, share.", get=lambda r: r.top_lesion_slices(),
                label="Slices with the most lesion"),
    RecordField("in_distribution", bool, "False when most scored slices lie far from the training images.",
                label="Like the training images"),
    RecordField("warnings", list, "What to know about the series (spacing, orientation, other series).",
                get=lambda r: r.study.warnings, label="Warnings"),
    RecordField("error", str, "Why the study has no answer.", label="Error"),
))

_PLACE = (
    RecordField("study", str, "The study the slice belongs to.", label="Study"),
    RecordField("slice", int, "The slice's place in its series as scored (1 = first, feet to head for DICOM).",
                label="Place in the series"),
    RecordField("instance_number", int, "The slice's InstanceNumber: how a PACS numbers it (DICOM).",
                label="InstanceNumber"),
    RecordField("slice_z_mm", float, "The slice's position along the body: the z of its ImagePositionPatient, mm "
                "(DICOM).", digits=2, label="Position z", unit=" mm"),
)
_USE = (
    RecordField("used", bool, "Whether the slice was scored.", label="Scored"),
    RecordField("note", str, "Why a slice was not scored (outside the lungs, not sampled, another series).",
                label="Why not scored"),
)


def _severity(result, name: str):
    return None if result.severity is None else getattr(result.severity, name)


def answer_counts(rows, error_rate: float | None) -> str:
    """'3 COVID, 5 NonCOVID, 2 uncertain, 1 not assessable (error rate 0.1)' for rows with an answer."""
    answered = [r.answer for r in rows if getattr(r, "answer", None)]
    if not answered:
        return "no answers (a model fitted before the answer policy: refit it, or calibrate it on a site's labels)"
    return ", ".join(f"{answered.count(a)} {a}" for a in ANSWERS) + f" (error rate {error_rate:g})"


def label_and_finding_lines(rows, threshold: float) -> list[str]:
    """The summary lines every prediction report ends its counts with: the label column's counts at the
    model's threshold and, where rows have one, the lesion finding's counts (rows: slices or studies;
    those without a P(COVID) are left out)."""
    labeled = [r.label for r in rows if getattr(r, "p_covid", None) is not None]
    n_covid = labeled.count(LABELS[0])
    lines = [f"  P(COVID) >= threshold {threshold:.3f} (the label column): {n_covid} COVID, "
             f"{len(labeled) - n_covid} NonCOVID"]
    if findings := finding_counts(rows):  # the lesion evidence: it transfers to a new hospital
        lines.append(f"  lesion finding: {findings}")
    return lines


def finding_counts(rows) -> str | None:
    """'2 opacities, 0 clear, 1 uncertain, 0 not assessable' for rows with a lesion finding (None: none has)."""
    found = [r.finding for r in rows if getattr(r, "finding", None)]
    return ", ".join(f"{found.count(f)} {f}" for f in FINDINGS) if found else None


# One image's prediction: SLICE's stored fields, and what the model uses but does not report:
# ``site`` (whose feature statistics standardized it, harmonized models) and ``lesion`` (its
# LesionSummary, models with a segmentation network).
PredictionRow = SLICE.row_class("PredictionRow", (("site", None), ("lesion", None)))


def study_slice() -> RecordSchema:
    """A study's slice: where it sits, the slice record, and whether it was scored."""
    return RecordSchema("study slice", _PLACE + tuple(f for f in SLICE.fields if f.name != "heatmap") + _USE)
