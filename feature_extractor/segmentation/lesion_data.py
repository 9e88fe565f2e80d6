"""Lesion data: slices with radiologists' infection (and lung) masks, or slice-level infection labels.

Two layouts are read from a folder (``--lesion-data DIR``):

- ``manifest.csv`` (like shared/data/lesion-slices): ``path`` and optional ``patient``,
  ``slice``, ``infected`` (1: infection visible on the slice), ``infection_fraction`` (infected
  share of the lung), ``lung_mask`` and ``infection_mask`` (PNG files aligned with the slice:
  0 outside, anything else inside). Relative paths are from the manifest's folder.
- ``slices.csv`` (like shared/data/dicom-studies): ``path``, ``patient`` and ``infection``
  (the radiologists' slice label); no masks: for measuring slice-level separation only.

A slice's patient groups every split and fold; a slice without one is its own group (say so
in reports). :func:`check_masks` reads every mask before anything is trained or written, and
refuses a mask that does not fit its slice (size, unreadable, or lesions lying outside its
lungs: a flipped or shifted mask) with one line naming the file.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from covidct_core.errors import DatasetError
from covidct_core.provenance import fingerprint, sha256_file

MANIFESTS = ("manifest.csv", "slices.csv")
MIN_INSIDE = 0.5          # a slice's marked lesion must lie mostly inside its marked lungs
_CHECK_FROM = 0.005       # ... when it covers at least this share of the slice


@dataclass(frozen=True)
class LesionSlice:
    """One slice and what the radiologists marked on it."""

    path: str
    source: str
    patient: str | None = None
    infected: int | None = None             # infection visible on the slice (1) or not (0)
    infection_fraction: float | None = None  # infected share of the lung
    infection_mask: str | None = None
    lung_mask: str | None = None
    position: int | None = None             # place in its volume (1 = first), when known

    @property
    def group(self) -> str:
        """The patient (within its source), else the slice itself."""
        return f"{self.source}/{self.patient}" if self.patient else f"{self.source}/slice:{self.path}"


@dataclass(frozen=True)
class LesionData:
    """The lesion slices of one or more folders."""

    slices: tuple[LesionSlice, ...]
    folders: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def with_masks(self) -> list[LesionSlice]:
        return [s for s in self.slices if s.infection_mask]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(s.source for s in self.slices))

    @property
    def patients(self) -> list[str]:
        return sorted({s.group for s in self.slices if s.patient})

    def fingerprint(self) -> str:
        """SHA-256 over every slice's and mask's bytes and label: what a lesion head learned from."""
        def digest(path: str | None) -> str:
            return sha256_file(path) if path else "-"
        return fingerprint(f"{digest(s.path)}:{digest(s.infection_mask)}:{digest(s.lung_mask)}:{s.infected}"
                           for s in self.slices)

    def describe(self) -> dict:
        """The manifest's record: sources, counts and fingerprint (no paths of slices)."""
        return {"folders": list(self.folders), "sources": self.sources, "n_slices": len(self.slices),
                "n_with_masks": len(self.with_masks), "n_with_lung_masks": sum(bool(s.lung_mask) for s in self.slices),
                "n_infected": sum(s.infected == 1 for s in self.slices),
                "patients": len(self.patients),
                "slices_without_patient": sum(s.patient is None for s in self.slices),
                "fingerprint": self.fingerprint()}


def _number(text: str, what: str, where: str) -> float | None:
    if not text.strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise DatasetError(f"{where}: {what} {text!r} is not a number") from None


def load_lesion_folder(folder: str | Path) -> LesionData:
    """The lesion slices listed in ``folder``'s manifest.csv or slices.csv."""
    folder = Path(folder)
    manifest = next((folder / name for name in MANIFESTS if (folder / name).is_file()), None)
    if manifest is None:
        raise DatasetError(f"--lesion-data {folder}: no manifest.csv (path, infected, infection_mask, "
                           "lung_mask, ...) or slices.csv (path, patient, infection) in it")
    source = folder.resolve().name
    slices = []
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in columns:
            raise DatasetError(f"{manifest}: a lesion manifest needs a 'path' column; found {list(columns)}")
        label_column = "infected" if "infected" in columns else "infection" if "infection" in columns else None
        for line, row in enumerate(reader, start=2):
            def get(name: str) -> str:
                return (row.get(columns[name]) or "").strip() if name in columns else ""
            where = f"{manifest}, line {line}"
            if not get("path"):
                continue

            def file(name: str) -> str | None:
                text = get(name)
                if not text:
                    return None
                path = Path(text) if Path(text).is_absolute() else folder / text
                return str(path)
            label = _number(get(label_column), label_column, where) if label_column else None
            if label is not None and label not in (0, 1):
                raise DatasetError(f"{where}: {label_column} must be 0 or 1, not {get(label_column)!r}")
            position = _number(get("slice") or get("instance_number"), "slice", where)
            slices.append(LesionSlice(
                file("path"), source, get("patient") or None, None if label is None else int(label),
                _number(get("infection_fraction"), "infection_fraction", where), file("infection_mask"),
                file("lung_mask"), None if position is None else int(position)))
    if not slices:
        raise DatasetError(f"{manifest}: it lists no slices")
    missing = [s.path for s in slices if not Path(s.path).is_file()]
    if missing:
        raise DatasetError(f"{manifest}: {len(missing)} slices are not there, e.g. {missing[0]}")
    notes = ()
    if any(s.patient is None for s in slices):
        notes = (f"{source}: {sum(s.patient is None for s in slices)} slices without a patient id are "
                 "each their own group",)
    return LesionData(tuple(slices), (str(folder.resolve()),), notes)


def load_lesion_data(folders: Sequence[str | Path]) -> LesionData:
    """The lesion slices of several folders (each a source, named after the folder)."""
    parts = [load_lesion_folder(f) for f in folders]
    names = [p.sources[0] for p in parts]
    if len(set(names)) != len(names):
        raise DatasetError(f"two --lesion-data folders have the same name ({', '.join(names)}); rename one")
    return LesionData(tuple(s for p in parts for s in p.slices), tuple(f for p in parts for f in p.folders),
                      tuple(n for p in parts for n in p.notes))


def read_mask(path: str, shape: tuple[int, int], image: str) -> np.ndarray:
    """A mask file as a boolean array; DatasetError naming the file when it cannot be read or
    does not have its slice's size (``shape``: the slice's height and width)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            mask = np.asarray(img.convert("L")) > 0
    except FileNotFoundError:
        raise DatasetError(f"mask {path} (of {image}) is not there") from None
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"mask {path} (of {image}) cannot be read: {exc}") from None
    if mask.shape != tuple(shape):
        raise DatasetError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} px but its slice {image} is "
                           f"{shape[1]}x{shape[0]}: masks must be aligned with their slice")
    return mask


@dataclass(frozen=True)
class SliceMasks:
    infection: np.ndarray | None
    lungs: np.ndarray | None


def slice_masks(s: LesionSlice, shape: tuple[int, int]) -> SliceMasks:
    """A slice's masks, checked against its size and against each other."""
    infection = read_mask(s.infection_mask, shape, s.path) if s.infection_mask else None
    lungs = read_mask(s.lung_mask, shape, s.path) if s.lung_mask else None
    if infection is not None and lungs is not None and infection.mean() >= _CHECK_FROM:
        inside = float((infection & lungs).sum() / infection.sum())
        if inside < MIN_INSIDE:
            raise DatasetError(f"mask {s.infection_mask}: only {inside:.0%} of its lesion lies inside the lungs of "
                               f"{s.lung_mask}; is one of them flipped or shifted?")
    return SliceMasks(infection, lungs)


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image or DICOM slice, from its header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except (OSError, UnidentifiedImageError):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            return int(ds.Rows), int(ds.Columns)
        except Exception as exc:  # pydicom raises many kinds
            raise DatasetError(f"{path} cannot be read as an image: {exc}") from None


def check_masks(data: LesionData) -> None:
    """Read every mask of ``data`` once, before anything is computed or written (DatasetError on
    the first that does not fit; also when every lung mask is empty: the wrong column)."""
    n_lung_masks, any_lungs = 0, False
    for s in data.slices:
        if s.infection_mask or s.lung_mask:
            masks = slice_masks(s, image_size(s.path))
            if masks.lungs is not None:
                n_lung_masks += 1
                any_lungs = any_lungs or bool(masks.lungs.any())
    if n_lung_masks and not any_lungs:
        raise DatasetError(f"all {n_lung_masks} lung masks in {', '.join(data.folders)} are empty: check the "
                           "lung_mask column")
