"""NIfTI CT volumes (.nii, .nii.gz) as studies: each axial slice becomes a small DICOM file.

The slice files make a volume go through the same path as a DICOM series: content keys for
the cache, HU through RescaleIntercept, the window, the lung check. They are written once per
volume (named by the SHA-256 of the file) into a private folder under the system's temporary
folder, deterministically (UIDs derived from the volume's hash, no dates, no identifiers), so
a rerun finds the same bytes and the same cached features.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

NIFTI_SUFFIXES = frozenset({".nii", ".nii.gz"})
_DONE = "complete"


class VolumeError(Exception):
    """A NIfTI file that cannot be read as a CT volume; the message says why."""


def _digest(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def work_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / f"covidct-nifti-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def volume_slices(path: str | Path, folder: Path | None = None) -> tuple[list[str], str, list[str]]:
    """The volume's axial slices as DICOM files, inferior to superior; a description of the
    volume; warnings. Raises VolumeError."""
    import nibabel as nib

    try:
        image = nib.as_closest_canonical(nib.load(str(path)))  # RAS: axis 2 runs feet to head
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises many kinds for damaged or foreign files
        raise VolumeError(f"unreadable NIfTI volume: {str(exc).splitlines()[0][:200]}") from None
    warnings = []
    if data.ndim == 4:
        data = data[..., 0]
        warnings.append("4D volume: its first volume used")
    if data.ndim != 3:
        raise VolumeError(f"not a 3D volume (shape {data.shape})")
    lo, hi = float(np.nanmin(data)), float(np.nanmax(data))
    if lo > -500 or hi < 100:
        warnings.append(f"values {lo:.0f}..{hi:.0f} do not look like Hounsfield units")
    zooms = [float(z) for z in image.header.get_zooms()[:3]]
    digest = _digest(path)
    out = (folder or work_folder()) / digest[:24]
    names = [str(out / f"{k:05d}.dcm") for k in range(data.shape[2])]
    if not (out / _DONE).exists():
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
        for k, name in enumerate(names):
            # rows anterior to posterior, as a radiologist looks at an axial slice
            _write_slice(name, np.flipud(data[:, :, k].T), zooms, k, digest)
        (out / _DONE).write_text(str(path))
    description = f"NIfTI volume {data.shape[0]}x{data.shape[1]}x{data.shape[2]}, " \
                  f"{zooms[0]:.2g}x{zooms[1]:.2g}x{zooms[2]:.2g} mm"
    return names, description, warnings


def _write_slice(path: str, hu: np.ndarray, zooms: list[float], k: int, digest: str) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[digest, "slice", str(k)])
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[digest, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[digest, "series"])
    ds.Modality, ds.ImageType, ds.InstanceNumber = "CT", ["DERIVED", "SECONDARY", "AXIAL"], k + 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0.0, 0.0, round(k * zooms[2], 4)]
    ds.PixelSpacing, ds.SliceThickness = [zooms[1], zooms[0]], zooms[2]
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = np.clip(np.round(np.nan_to_num(hu, nan=-1024.0)) + 1024, 0, 65535).astype("<u2").tobytes()
    tmp = f"{path}.{os.getpid()}.tmp"
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
