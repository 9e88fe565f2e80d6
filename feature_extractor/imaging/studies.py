"""Studies: what a hospital asks about. A folder of slices -> one ordered series per study.

How a folder is read (``predict --studies``, ``evaluate --studies``):
- DICOM files (any depth, symlinked folders followed) are grouped by StudyInstanceUID and
  SeriesInstanceUID from their headers (pixel data not read). Per study, one series is used:
  CT image storage only (localizers/scouts, secondary captures, structured reports and dose
  reports, other modalities are skipped), axial before other orientations, then the thinnest
  slices, then a lung reconstruction kernel, then the most slices. Its slices are sorted by
  ImagePositionPatient along the slice normal (InstanceNumber when positions are missing);
  uneven spacing or mixed orientations give a warning.
- A folder holding PNG/JPEG slices directly is one study (its files in natural name order).
- A NIfTI volume (.nii, .nii.gz) is one study; its axial slices, feet to head
  (nifti.py), go through the DICOM path.
- Slices outside the lungs are skipped at prediction time (slice_choice.py), and ``max_slices``
  samples evenly among the rest.

Privacy: study names are the study's folder relative to the input folder (plus a salted
hash of the StudyInstanceUID when several studies share a folder); UIDs, patient name, ID and
birth date are never written by default (the CLI's --keep-identifiers opts in). :class:`Redactor` removes the
header identifiers from any text we write (file names often carry the patient ID).
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .dataset import DICOM_SUFFIXES, list_image_files
from .nifti import NIFTI_SUFFIXES, VolumeError, volume_slices

CT_IMAGE_STORAGE = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}  # CT, enhanced CT
_LUNG_KERNEL = re.compile(r"lung|^b[6-8]\d|^br[5-9]\d|^i[5-8]\d|^fc(5\d|8\d)|^y[ab]$|^l$", re.I)
_IDENTIFIER_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs")
REDACTED = "[patient]"


@dataclass
class Study:
    """One study, ready to score: its chosen series' slices in order."""

    name: str
    kind: str                                    # dicom | images
    slices: list[str]                            # paths, ordered along the body
    series: str = ""                             # what was chosen, e.g. "CT axial 2 mm D40s (50 of 50 files)"
    n_files: int = 0                             # every file of the study, all series
    warnings: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # path -> why it is not among the slices
    identifiers: dict[str, str] = field(default_factory=dict)  # UIDs: for matching, never written by default
    places: dict[str, "SlicePlace"] = field(default_factory=dict)  # path -> where a PACS shows it (DICOM)

    def place(self, path: str) -> "SlicePlace":
        return self.places.get(path) or SlicePlace()


@dataclass(frozen=True)
class SlicePlace:
    """How a PACS names a slice: its InstanceNumber and its position along the body (the z of its
    ImagePositionPatient, mm); None where the file does not say (images, headers without them)."""

    instance_number: int | None = None
    z_mm: float | None = None

    @classmethod
    def of(cls, ds) -> "SlicePlace":
        try:
            number = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") not in (None, "") else None
        except (TypeError, ValueError):
            number = None
        position = ds.get("ImagePositionPatient")
        try:
            z = round(float(position[2]), 2) if position is not None and len(position) == 3 else None
        except (TypeError, ValueError):
            z = None
        return cls(number, z)


class Redactor:
    """Removes the patient identifiers seen in DICOM headers from text we write."""

    def __init__(self, values: Iterable[str] = ()):
        self.values = sorted({v for v in values if len(v) >= 3}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


@dataclass
class StudyScan:
    studies: list[Study]
    redact: Redactor
    unassigned: dict[str, str] = field(default_factory=dict)  # files that belong to no study, and why


def redactor_for(paths: Iterable[str]) -> Redactor:
    """The identifiers in the headers of the DICOM files among ``paths`` (others are skipped)."""
    values: list[str] = []
    for path in paths:
        if Path(path).suffix.lower() in DICOM_SUFFIXES:
            try:
                values += _identifier_values(_header(path))
            except Exception:  # unreadable: its error is reported where it is decoded
                continue
    return Redactor(values)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _header(path: str):
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True, force=True)


def _identifier_values(ds) -> list[str]:
    values = []
    for tag in _IDENTIFIER_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            continue
        if tag == "PatientName":
            values += [str(value)] + [p for p in re.split(r"[\^= ]", str(value)) if p]
        elif isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            values += [str(v) for v in value]
        else:
            values.append(str(value))
    return values


def _normal(ds) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    n = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def _is_ct_image(ds) -> str | None:
    """None when ``ds`` is a CT image slice, else why it is skipped."""
    modality = str(ds.get("Modality", ""))
    sop = str(ds.get("SOPClassUID", ""))
    image_type = [str(t).upper() for t in (ds.get("ImageType") or [])]
    if modality and modality != "CT":
        return f"modality {modality}, not CT"
    if sop and sop not in CT_IMAGE_STORAGE:
        return "not a CT image (secondary capture, report or other object)"
    if "LOCALIZER" in image_type or "SCOUT" in image_type:
        return "localizer (scout) image"
    if "Rows" not in ds:
        return "no image in the file"
    return None


def _series_description(datasets: list, n_files: int) -> str:
    ds = datasets[0]
    normal = _normal(ds)
    plane = "axial" if normal is not None and abs(normal[2]) > 0.8 else "non-axial"
    thickness = ds.get("SliceThickness")
    kernel = ds.get("ConvolutionKernel")
    kernel = "/".join(map(str, kernel)) if isinstance(kernel, (list, tuple)) or type(kernel).__name__ == "MultiValue" \
        else (str(kernel) if kernel else "")
    parts = [f"CT {plane}", f"{float(thickness):g} mm" if thickness not in (None, "") else "", kernel,
             f"({len(datasets)} of {n_files} files)"]
    return " ".join(p for p in parts if p)


def _series_rank(datasets: list) -> tuple:
    ds = datasets[0]
    normal = _normal(ds)
    axial = normal is not None and abs(normal[2]) > 0.8
    try:
        thickness = float(ds.get("SliceThickness") or 99)
    except (TypeError, ValueError):
        thickness = 99.0
    kernel = ds.get("ConvolutionKernel") or ""
    kernel = " ".join(map(str, kernel)) if not isinstance(kernel, str) else kernel
    return (axial, -thickness, bool(_LUNG_KERNEL.search(kernel.strip())), len(datasets))


def _order(items: list[tuple[str, object]], warnings: list[str]) -> list[str]:
    """Slices sorted along the body; warns about mixed orientation or uneven spacing."""
    normals = [_normal(ds) for _, ds in items]
    known = [n for n in normals if n is not None]
    if known:
        reference = known[0]
        other = sum(1 for n in known if abs(float(np.dot(n, reference))) < 0.99)
        if other:
            warnings.append(f"{other} slices have another orientation than the rest")
    positions = []
    for (path, ds), n in zip(items, normals):
        ipp = ds.get("ImagePositionPatient")
        positions.append(float(np.dot(np.array(ipp, float), n)) if ipp is not None and n is not None else None)
    if all(p is not None for p in positions):
        order = sorted(range(len(items)), key=lambda i: positions[i])
        gaps = np.diff(sorted(positions))
        if len(gaps) >= 2:
            median = float(np.median(gaps))
            if median <= 0 or float(gaps.max() - gaps.min()) > 0.1 * median + 0.01:
                warnings.append(f"uneven slice spacing ({float(gaps.min()):.2g}-{float(gaps.max()):.2g} mm)")
    else:
        order = sorted(range(len(items)), key=lambda i: (int(items[i][1].get("InstanceNumber") or 0),
                                                         _natural_key(items[i][0])))
        warnings.append("no slice positions: ordered by InstanceNumber")
    return [items[i][0] for i in order]


def _salted(uid: str, salt: str) -> str:
    return hashlib.sha256((salt + uid).encode()).hexdigest()[:8]


@dataclass
class DicomScan:
    """The DICOM headers under a folder, grouped: study UID -> series UID -> (path, header) of its CT
    images; the files skipped (study UID -> path -> why), each study's folders, files that belong to no
    study (path -> why), the folders of PNG/JPEG files, and the patient identifiers seen."""

    by_study: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    skipped: dict = field(default_factory=lambda: defaultdict(dict))
    study_folders: dict = field(default_factory=lambda: defaultdict(set))
    unassigned: dict = field(default_factory=dict)
    image_folders: dict = field(default_factory=lambda: defaultdict(list))
    identifiers: list = field(default_factory=list)


def find_studies(folder: str | Path) -> StudyScan:
    """Every study under ``folder`` (see the module docstring). Each study keeps its UIDs in
    ``identifiers`` for matching labels; writers leave them out unless asked to keep them."""
    folder = Path(folder)
    scan = scan_headers(list_image_files(folder))
    redact = Redactor(scan.identifiers)
    studies = dicom_studies(scan, folder, redact) + nifti_studies(folder, redact, scan.unassigned) + \
        image_studies(scan.image_folders, folder, redact)
    # A file whose header cannot be read is listed with the study of its folder, if one.
    for path, reason in scan.unassigned.items():
        owner = next((s for s in studies if any(os.path.dirname(p) == os.path.dirname(path) for p in s.slices)), None)
        if owner is not None:
            owner.errors[path] = reason
    leftover = {p: r for p, r in scan.unassigned.items() if not any(p in s.errors for s in studies)}
    studies.sort(key=lambda s: _natural_key(s.name))
    return StudyScan(studies, redact, leftover)


def scan_headers(files: Iterable[str]) -> DicomScan:
    """The headers of the DICOM files among ``files`` (pixel data not read), grouped by study and series."""
    scan = DicomScan()
    for path in files:
        if Path(path).suffix.lower() not in DICOM_SUFFIXES:
            scan.image_folders[os.path.dirname(path)].append(path)
            continue
        try:
            ds = _header(path)
        except Exception as exc:  # pydicom raises many kinds for damaged files
            scan.unassigned[path] = f"unreadable DICOM header: {str(exc).splitlines()[0][:200]}"
            continue
        scan.identifiers += _identifier_values(ds)
        study_uid = str(ds.get("StudyInstanceUID") or f"folder:{os.path.dirname(path)}")
        scan.study_folders[study_uid].add(os.path.dirname(path))
        reason = _is_ct_image(ds)
        if reason:
            scan.skipped[study_uid][path] = reason
            continue
        scan.by_study[study_uid][str(ds.get("SeriesInstanceUID") or "")].append((path, ds))
    return scan


def dicom_studies(scan: DicomScan, folder: Path, redact: Redactor) -> list[Study]:
    """One study per StudyInstanceUID, named by its folder (a salted hash beside it when several
    studies share a folder), with its chosen series' slices in order."""
    salt = secrets.token_hex(8)  # per run: hashed names cannot be linked across runs
    uids = list(scan.by_study) + [u for u in scan.skipped if u not in scan.by_study]
    folder_count: dict[str, int] = defaultdict(int)
    for uid in uids:
        folder_count[_common_folder(scan.study_folders[uid])] += 1
    studies = []
    for uid in uids:
        where = _common_folder(scan.study_folders[uid])
        name = redact(_relative(where, folder)) + (f"#{_salted(uid, salt)}" if folder_count[where] > 1 else "")
        series = scan.by_study.get(uid, {})
        n_files = sum(len(v) for v in series.values()) + len(scan.skipped.get(uid, {}))
        study = Study(name, "dicom", [], n_files=n_files, errors=dict(scan.skipped.get(uid, {})))
        if series:
            choose_series(study, uid, series)
        else:
            study.errors.setdefault("", "no CT image series in the study")
        studies.append(study)
    return studies


def choose_series(study: Study, uid: str, series: dict[str, list]) -> None:
    """The study's series to score (see the module docstring), its slices ordered along the body; the
    other series' files are listed as not used."""
    ranked = sorted(series.items(), key=lambda kv: _series_rank([ds for _, ds in kv[1]]), reverse=True)
    chosen_uid, chosen = ranked[0]
    for _, other in ranked[1:]:
        for path, _ in other:
            study.errors[path] = "another series of the study was used"
    study.series = _series_description([ds for _, ds in chosen], study.n_files)
    study.slices = _order(chosen, study.warnings)
    study.places = {path: SlicePlace.of(ds) for path, ds in chosen}
    if len(ranked) > 1:
        study.warnings.append(f"{len(ranked)} image series; used {study.series}")
    study.identifiers = {"study_uid": uid, "series_uid": chosen_uid}  # written only when kept


def nifti_studies(folder: Path, redact: Redactor, unassigned: dict[str, str]) -> list[Study]:
    """One study per NIfTI volume; a volume that cannot be read goes to ``unassigned`` with why."""
    studies = []
    for path in list_image_files(folder, NIFTI_SUFFIXES):
        try:
            slices, description, warnings = volume_slices(path)
        except VolumeError as exc:
            unassigned[path] = str(exc)
            continue
        name = re.sub(r"\.nii(\.gz)?$", "", _relative(path, folder), flags=re.I)
        studies.append(Study(redact(name), "nifti", slices, series=description, n_files=1, warnings=warnings))
    return studies


def image_studies(image_folders: dict[str, list[str]], folder: Path, redact: Redactor) -> list[Study]:
    """One study per folder of PNG/JPEG slices, in natural name order."""
    return [Study(redact(_relative(where, folder)), "images",
                  sorted(paths, key=lambda p: _natural_key(os.path.basename(p))),
                  series=f"{len(paths)} image files", n_files=len(paths))
            for where, paths in sorted(image_folders.items())]


def _common_folder(folders: set[str]) -> str:
    return os.path.commonpath(sorted(folders)) if folders else ""


def _relative(path: str, root: Path) -> str:
    rel = os.path.relpath(path, root) if path else "."
    return root.name if rel == "." else rel
