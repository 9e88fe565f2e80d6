"""A study's results: each slice where it sits with its prediction (StudySlice, the slice CSV's
rows) and the study's answer with what its slices add up to (StudyResult, studies.csv's rows)."""
from __future__ import annotations

from dataclasses import dataclass

from .prediction_record import STUDY, PredictionRow
from .severity import Severity, severity

TOP_SLICES = 3


@dataclass
class StudySlice:
    """One slice of a study as the slice CSV lists it: where it sits, its prediction (None when
    not scored) and why not; the slice record's other fields are the prediction's."""

    study: str
    slice: int | None
    path: str
    prediction: PredictionRow | None
    note: str | None = None
    instance_number: int | None = None
    slice_z_mm: float | None = None

    @property
    def used(self) -> bool:
        return self.prediction is not None and self.prediction.p_covid is not None

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "prediction":
            raise AttributeError(name)
        return getattr(self.prediction, name, None)


class StudyResult(STUDY.row_class("StudyFields", (("study", None), ("rows", ())))):
    """One study's result: the stored fields of the study record (prediction_record.STUDY), its
    ``study`` (imaging.studies.Study) and ``rows``: (1-based slice number, prediction or None, why
    not scored) per slice of its series. What the record computes from them is below."""

    @property
    def scored(self) -> list[tuple[int, PredictionRow]]:
        return [(i, r) for i, r, _ in self.rows if r is not None and r.p_covid is not None]

    def top(self, n: int = TOP_SLICES) -> list[tuple[int, PredictionRow]]:
        """The ``n`` highest-scoring slices, as (slice number, prediction)."""
        return sorted(self.scored, key=lambda ir: -ir[1].p_covid)[:n]

    def named(self, number: int) -> str:
        """A slice as a PACS names it: '#118 z -286.1' (its InstanceNumber and position, where the file
        gives them), else its place in the series."""
        place = self.study.place(self.study.slices[number - 1])
        name = f"#{place.instance_number}" if place.instance_number is not None else str(number)
        return name + (f" z {place.z_mm:g}" if place.z_mm is not None else "")

    def top_slices(self) -> str:
        return "; ".join(f"{self.named(i)} ({r.p_covid:.2f})" for i, r in self.top())

    @property
    def severity(self) -> Severity | None:
        """The study's percentages of opacity and CT severity score (severity.py; models with a lesion
        head). DICOM and NIfTI series run feet to head; a folder of images is taken head first."""
        summaries = [r.lesion for _, r in self.scored if r.lesion is not None]
        if not summaries:
            return None
        return severity([s.areas() for s in summaries], superior_first=self.study.kind == "images")

    def top_lesion(self, n: int = TOP_SLICES) -> list[tuple[int, PredictionRow]]:
        """The ``n`` slices with the largest share of lung involved."""
        with_lesion = [(i, r) for i, r in self.scored if r.lesion_fraction is not None]
        return sorted(with_lesion, key=lambda ir: -ir[1].lesion_fraction)[:n]

    def top_lesion_slices(self) -> str | None:
        top = self.top_lesion()
        return "; ".join(f"{self.named(i)} ({100 * r.lesion_fraction:.0f}%)" for i, r in top) if top else None
