"""Where a DICOM series' slices lie in the patient: the regular grid a volume (NIfTI) needs.

A series is placed slice by slice: each slice at its own ImagePositionPatient along the slices' normal.
Where the steps between slices are whole multiples of the series' usual step (a slice missing, or every
other one), the grid keeps the usual step and the missing places stay empty: no slice is ever shifted.
A series that no regular grid holds is refused with the reason: mixed orientations, a gantry tilt (the
positions do not run along the normal), steps that are no multiple of one another, or no positions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from covidct_core.errors import CovidCTError

STEP_TOLERANCE = 0.05    # of the usual step: how far a step may be from a whole multiple of it
ORIENTATION_TOLERANCE = 1e-3
TILT_TOLERANCE_MM = 0.1


class GeometryError(CovidCTError):
    """A series whose slices no regular grid holds (the message says why)."""


@dataclass(frozen=True)
class SeriesGrid:
    """A series on a regular grid: ``lps`` maps a voxel (column, row, grid slice) to DICOM's patient
    coordinates (LPS, mm); ``index``: each given slice's place on the grid (in the given order);
    ``slices``: the grid's slices (``missing`` of them without a slice of the series)."""

    lps: np.ndarray
    index: tuple[int, ...]
    slices: int

    @property
    def missing(self) -> int:
        return self.slices - len(set(self.index))

    @property
    def ras(self) -> np.ndarray:
        """The NIfTI affine (RAS): LPS with x and y flipped."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.lps


def series_grid(headers: Sequence) -> SeriesGrid:
    """The grid of a series' slices (their DICOM headers, ordered along the body); GeometryError when no
    regular grid holds them (see the module docstring)."""
    if not headers:
        raise GeometryError("no slices")
    try:
        iops = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
        ipps = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
        row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        raise GeometryError("the headers give no ImageOrientationPatient, ImagePositionPatient or PixelSpacing") \
            from None
    if np.abs(iops - iops[0]).max() > ORIENTATION_TOLERANCE:
        raise GeometryError("its slices have mixed orientations")
    row_dir, col_dir = iops[0, :3], iops[0, 3:]
    normal = np.cross(row_dir, col_dir)
    offsets = ipps - ipps[0]
    along = offsets @ normal
    if np.abs(offsets - np.outer(along, normal)).max() > TILT_TOLERANCE_MM:
        raise GeometryError("its slices do not lie along their normal (a gantry tilt)")
    index, step = _grid_index(along, headers[0])
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * col_spacing, col_dir * row_spacing, normal * step, ipps[0]
    return SeriesGrid(lps, tuple(index), int(max(index)) + 1)


def _grid_index(along: np.ndarray, first) -> tuple[list[int], float]:
    """Each slice's place on the grid of the series' smallest step, and that step (signed: the direction
    from the first slice to the last)."""
    if len(along) == 1:
        return [0], float(getattr(first, "SliceThickness", 1) or 1)
    steps = np.diff(along)
    if np.any(np.abs(steps) < 1e-3) or not (np.all(steps > 0) or np.all(steps < 0)):
        raise GeometryError("two of its slices share a position, or its slices are not in order along the body")
    step = float(np.abs(steps).min()) * float(np.sign(steps[0]))
    places = (along - along[0]) / step
    index = np.round(places).astype(int)
    if np.abs(places - index).max() > STEP_TOLERANCE:
        gaps = sorted({round(abs(float(s)), 2) for s in steps})
        raise GeometryError(f"its slices are not evenly spaced ({', '.join(f'{g:g}' for g in gaps[:4])} mm apart)")
    return index.tolist(), step
