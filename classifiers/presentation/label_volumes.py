"""A DICOM study's lesion map as a NIfTI label volume: 1 right lung, 2 left lung, 3 lesion, 0
elsewhere (and on slices not scored), with the series' geometry, so it opens over the study in 3D
Slicer or ITK-SNAP. The header carries no patient identity (description, aux file and intent name
say what the labels are) unless identifiers are kept."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

LESION_LABEL = 3
VOLUME_LABELS = {1: "right lung", 2: "left lung", LESION_LABEL: "lesion"}


def series_affine(headers: Sequence) -> np.ndarray:
    """The NIfTI (RAS) affine of a series' voxels (i: column, j: row, k: slice in the given order)
    from its DICOM headers (ImageOrientationPatient, PixelSpacing, ImagePositionPatient)."""
    first = headers[0]
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in first.PixelSpacing)
    origin = np.array(first.ImagePositionPatient, dtype=float)
    if len(headers) > 1:
        step = (np.array(headers[-1].ImagePositionPatient, dtype=float) - origin) / (len(headers) - 1)
    else:
        step = np.cross(row_dir, col_dir) * float(getattr(first, "SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * col_spacing, col_dir * row_spacing, step, origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS to NIfTI's RAS


def label_slice(lesion_map) -> np.ndarray:
    """(rows, columns) uint8 labels of one slice's LesionMap."""
    labels = lesion_map.sides.astype(np.uint8)
    labels[lesion_map.lesion] = LESION_LABEL
    return labels


def write_label_volume(out: str | Path, slices: Sequence[np.ndarray | None], headers: Sequence,
                       description: str = "") -> Path:
    """``slices``: each slice's labels in series order (None: not scored, all 0)."""
    import nibabel as nib

    shape = next(s.shape for s in slices if s is not None)
    volume = np.stack([s if s is not None else np.zeros(shape, np.uint8) for s in slices], axis=-1)
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(1, 0, 2)), series_affine(headers))
    header = image.header
    header.set_intent("label", name="lung-lesion")
    header["descrip"] = (description or "1 right lung, 2 left lung, 3 lesion").encode()[:79]
    header["aux_file"] = b""
    header.set_xyzt_units("mm")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(out))
    return out
