"""A DICOM study's lungs and lesion as a NIfTI label volume, with its label tables, so that it opens over
the study in 3D Slicer or ITK-SNAP: 1 right lung, 2 left lung, 3 lesion in the right lung, 4 lesion in
the left lung, 0 elsewhere. The series' geometry is its own, slice by slice (imaging/geometry.py): qform
and sform both set (code 1, scanner), a slice missing from a series stays 0 at its place (the header's
description counts them), and a series no regular grid holds gets no volume. Every slice of the series is
segmented, scored or not. Beside the volume: ``<name>.ctbl`` (a 3D Slicer colour table) and
``<name>.itksnap.txt`` (an ITK-SNAP label description). The header carries no patient identity
(description, aux file and intent name say what the labels are) unless identifiers are kept."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from feature_extractor.imaging.geometry import series_grid
from feature_extractor.lungs.sides import LEFT, RIGHT

RIGHT_LESION, LEFT_LESION = 3, 4
VOLUME_LABELS = {RIGHT: ("right lung", (40, 200, 255)), LEFT: ("left lung", (190, 120, 255)),
                 RIGHT_LESION: ("lesion, right lung", (255, 64, 0)), LEFT_LESION: ("lesion, left lung", (255, 160, 0))}
NIFTI_SUFFIX = ".nii.gz"


def label_slice(segmentation) -> np.ndarray:
    """(rows, columns) uint8 labels of one slice's SliceSegmentation (VOLUME_LABELS)."""
    labels = segmentation.sides.astype(np.uint8)
    labels[segmentation.lesion & (segmentation.sides == RIGHT)] = RIGHT_LESION
    labels[segmentation.lesion & (segmentation.sides == LEFT)] = LEFT_LESION
    return labels


def write_label_volume(out: str | Path, slices: Sequence[np.ndarray | None], headers: Sequence,
                       description: str = "") -> Path:
    """``slices``: each slice's labels in series order (None: not segmented, all 0); ``headers``: their DICOM
    headers. GeometryError when no regular grid holds the series (nothing is written then)."""
    import nibabel as nib

    grid = series_grid(headers)
    shape = next(s.shape for s in slices if s is not None)
    volume = np.zeros((*shape, grid.slices), np.uint8)
    for k, labels in zip(grid.index, slices):
        if labels is not None:
            volume[..., k] = labels
    image = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(1, 0, 2)), grid.ras)
    image.set_qform(grid.ras, code=1)
    image.set_sform(grid.ras, code=1)
    header = image.header
    header.set_intent("label", name="lung-lesion")
    missing = f"; {grid.missing} slices missing from the series are 0" if grid.missing else ""
    header["descrip"] = ((description or "1 R lung, 2 L lung, 3 R lesion, 4 L lesion") + missing).encode()[:79]
    header["aux_file"] = b""
    header.set_xyzt_units("mm")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(out))
    write_label_tables(out)
    return out


def write_label_tables(volume: Path) -> tuple[Path, Path]:
    """The label tables beside a volume: a 3D Slicer colour table and an ITK-SNAP label description."""
    stem = volume.name[:-len(NIFTI_SUFFIX)] if volume.name.endswith(NIFTI_SUFFIX) else volume.stem
    slicer, itksnap = volume.with_name(f"{stem}.ctbl"), volume.with_name(f"{stem}.itksnap.txt")
    labels = {0: ("outside the lungs", (0, 0, 0)), **VOLUME_LABELS}
    slicer.write_text("# 3D Slicer colour table: index name R G B A\n" + "".join(
        f"{k} {name.replace(' ', '_').replace(',', '')} {r} {g} {b} {0 if k == 0 else 255}\n"
        for k, (name, (r, g, b)) in labels.items()))
    itksnap.write_text("# ITK-SNAP label description: IDX R G B A VIS MSH LABEL\n" + "".join(
        f'{k:>5} {r:>5} {g:>5} {b:>5} {0 if k == 0 else 1:>8} {0 if k == 0 else 1:>2} {0 if k == 0 else 1:>2}    "{name}"\n'
        for k, (name, (r, g, b)) in labels.items()))
    return slicer, itksnap
