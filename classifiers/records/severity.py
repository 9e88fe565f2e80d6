"""A study's severity as radiologists score it (after CORADS-AI's CT severity score, Lessmann et
al. 2020): each lung split into its upper, middle and lower third along its extent in the series (thirds,
not lobes: the lobes' fissures are not segmented); per zone the percentage of opacity and a 0-5 score,
summed over the six zones to a 0-30 score. The lesion counts its parts of at least the model's minimum
area only (workflows/lesions/summary.py), so a normal lung scores 0.

Zone score: 0 none, 1 under 5%, 2 from 5 to 25%, 3 from 25 to 50%, 4 from 50 to 75%, 5 from 75%.
Slices of a series are equally thick, so areas add up to volumes. Input: per scored slice, in
series order, the lesion and lung areas of each lung (shares of the slice, LesionSummary).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ZONES = ("upper", "middle", "lower")   # thirds of each lung's extent
LUNGS = ("right", "left")
BOUNDS = (5.0, 25.0, 50.0, 75.0)   # % of opacity where the score steps up (1 starts above 0)


def zone_score(percent: float | None) -> int | None:
    """The 0-5 score of a zone's percentage of opacity (None: a zone without lung)."""
    if percent is None:
        return None
    if percent <= 0:
        return 0
    return 1 + sum(percent >= b for b in BOUNDS)


@dataclass(frozen=True)
class SliceAreas:
    """One slice's lung and lesion areas per lung (shares of the slice)."""

    lung_right: float
    lung_left: float
    lesion_right: float
    lesion_left: float


@dataclass(frozen=True)
class Severity:
    opacity_percent: float | None                      # the whole lungs
    opacity_right: float | None
    opacity_left: float | None
    zones: dict[str, float | None]                     # "right upper third" -> % of opacity
    scores: dict[str, int | None]                      # "right upper third" -> 0-5
    severity_score: int | None                         # 0-30 (None without any lung)

    def zone_text(self) -> str:
        return "; ".join(f"{name} {s}" for name, s in self.scores.items() if s is not None)


def zone_name(side: str, zone: str) -> str:
    """'right upper third': how a zone is named in reports and the API."""
    return f"{side} {zone} third"


def _percent(lesion: float, lung: float) -> float | None:
    return 100.0 * lesion / lung if lung > 0 else None


def severity(slices: Sequence[SliceAreas], superior_first: bool = True) -> Severity:
    """The severity of a series' scored slices, given in series order (``superior_first``: the first
    is the most superior; DICOM and NIfTI series are ordered feet to head, so pass False for them)."""
    rows = [s for s in slices if s.lung_right + s.lung_left > 0]
    if not superior_first:
        rows = rows[::-1]
    total_lung = sum(s.lung_right + s.lung_left for s in rows)
    total_lesion = sum(s.lesion_right + s.lesion_left for s in rows)
    zones, scores = {}, {}
    n = len(rows)
    for side in LUNGS:
        mine = [(getattr(s, f"lung_{side}"), getattr(s, f"lesion_{side}")) for s in rows]
        lit = [i for i, (lung, _) in enumerate(mine) if lung > 0]  # the lung's own extent in the series
        for z, zone in enumerate(ZONES):
            part = [i for k, i in enumerate(lit) if k * len(ZONES) // max(len(lit), 1) == z] if lit else []
            lung = sum(mine[i][0] for i in part)
            zones[zone_name(side, zone)] = _percent(sum(mine[i][1] for i in part), lung)
            scores[zone_name(side, zone)] = zone_score(zones[zone_name(side, zone)])
    known = [s for s in scores.values() if s is not None]
    return Severity(_percent(total_lesion, total_lung),
                    _percent(sum(s.lesion_right for s in rows), sum(s.lung_right for s in rows)),
                    _percent(sum(s.lesion_left for s in rows), sum(s.lung_left for s in rows)),
                    zones, scores, sum(known) if known and n else None)
