"""Find the images of a dataset and what is known about each: label, patient, split.

Three labeled layouts are understood, tried in this order:

(a) COVID-CT (UCSD-AI4H): ``CT_COVID/``, ``CT_NonCOVID/``, ``Data-split/`` with the official
    train/val/test lists, and the MetaInfo CSVs that give patient ids;
(b) one subfolder per class: ``COVID/`` and ``NonCOVID/`` (also ``CT_COVID``/``CT_NonCOVID``,
    any case, '-' or '_' ignored);
(c) a CSV manifest with columns ``path,label`` and optional ``patient,split,source``;
    relative paths are taken from the CSV's folder.

Several datasets load as one (``load_datasets``): every record carries its ``source``, by
default the dataset folder's name (a manifest's ``source`` column overrides it per row), and
patient groups are unique per source. Any folder can also be read unlabeled (for predict):
every image file under it. Labels: 1 = COVID, 0 = NonCOVID.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from covidct_core.errors import DatasetError
from covidct_core.provenance import sha256_file

from .decode import IMAGE_SUFFIXES

COVID_LABEL, NONCOVID_LABEL = 1, 0
LABEL_NAMES = {COVID_LABEL: "COVID", NONCOVID_LABEL: "NonCOVID"}
SPLITS = ("train", "val", "test")
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
CANDIDATE_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES


@dataclass(frozen=True)
class Record:
    """One image file and what is known about it. ``key`` is the SHA-256 of its bytes."""

    path: str
    label: int | None = None
    patient: str | None = None
    split: str | None = None
    key: str | None = None
    error: str | None = None
    source: str | None = None

    @property
    def group(self) -> str:
        """Grouping unit for splits and CV: the patient when known, else the image itself;
        within its source, so that two sources' "patient 1" stay two patients."""
        unit = self.patient or f"image:{self.key or self.path}"
        return f"{self.source}/{unit}" if self.source else unit


@dataclass(frozen=True)
class Dataset:
    root: str
    layout: str  # "covid-ct" | "class-folders" | "manifest" | "unlabeled", "+"-joined for several
    records: tuple[Record, ...]

    @property
    def has_split(self) -> bool:
        return any(r.split for r in self.records)

    @property
    def has_patients(self) -> bool:
        return any(r.patient for r in self.records)

    @property
    def sources(self) -> list[str]:
        """The sources, in the order their records come."""
        return list(dict.fromkeys(r.source for r in self.records if r.source))

    def source_has_split(self, source: str) -> bool:
        return any(r.split for r in self.records if r.source == source)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


_CLASS_DIRS = {"covid": COVID_LABEL, "ctcovid": COVID_LABEL, "noncovid": NONCOVID_LABEL, "ctnoncovid": NONCOVID_LABEL}


def printable_path(path: str) -> str:
    """A path as valid UTF-8 text, even when the file name's bytes are not UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def parse_label(value: str) -> int:
    text = _norm(str(value))
    if text in ("1", "covid", "ctcovid", "positive", "pos", "true", "yes"):
        return COVID_LABEL
    if text in ("0", "noncovid", "ctnoncovid", "negative", "neg", "false", "no"):
        return NONCOVID_LABEL
    raise DatasetError(f"unknown label {value!r}: use 1/COVID or 0/NonCOVID")


def list_image_files(folder: str | Path, suffixes: frozenset[str] = CANDIDATE_SUFFIXES) -> list[str]:
    """Image-like files under ``folder`` (names ending in one of ``suffixes``), recursively,
    sorted; hidden files skipped.

    Symlinked folders are followed (archives export studies as links), each real folder
    once, so a symlink loop cannot hang the walk and a folder linked twice is read once.
    """
    found = []
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in seen:  # reached again through a link
            dirnames[:] = []
            continue
        seen.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(tuple(suffixes)):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def _read_split_lists(split_dir: Path) -> dict[tuple[int, str], str]:
    """(label, file name) -> split, from Data-split/{COVID,NonCOVID}/{split}CT_*.txt."""
    result = {}
    for label, sub, suffix in ((COVID_LABEL, "COVID", "CT_COVID"), (NONCOVID_LABEL, "NonCOVID", "CT_NonCOVID")):
        for split in SPLITS:
            path = split_dir / sub / f"{split}{suffix}.txt"
            if not path.is_file():
                raise DatasetError(f"official split file missing: {path}")
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    result[(label, line.strip())] = split
    return result


def _read_patients(root: Path) -> dict[tuple[int, str], str]:
    """(label, file name) -> patient id from the MetaInfo CSVs, prefixed by class so that
    'Patient 1' of one table cannot merge with a patient of the other."""
    result = {}
    sources = ((COVID_LABEL, "COVID-CT-MetaInfo.csv", "File name", "Patient ID", "covid"),
               (NONCOVID_LABEL, "NonCOVID-CT-MetaInfo.csv", "image name", "patient id", "noncovid"))
    for label, fname, name_col, patient_col, prefix in sources:
        path = root / fname
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.DictReader(fh):
                name, patient = (row.get(name_col) or "").strip(), (row.get(patient_col) or "").strip()
                if name and patient:
                    result[(label, name)] = f"{prefix}/{patient}"
    return result


def _find_class_dirs(root: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for child in sorted(root.iterdir()):
        label = _CLASS_DIRS.get(_norm(child.name)) if child.is_dir() else None
        if label is not None:
            if label in found:
                raise DatasetError(f"two folders for class {LABEL_NAMES[label]} in {root}: "
                                   f"{found[label].name} and {child.name}")
            found[label] = child
    return found


def _load_class_folders(root: Path, class_dirs: dict[int, Path], with_split: bool, source: str) -> Dataset:
    splits = _read_split_lists(root / "Data-split") if with_split else {}
    patients = _read_patients(root) if with_split else {}
    records = []
    for label, folder in sorted(class_dirs.items()):
        for path in list_image_files(folder):
            name = os.path.relpath(path, folder)
            records.append(Record(path=path, label=label, patient=patients.get((label, name)),
                                  split=splits.get((label, name)), source=source))
    layout = "covid-ct" if with_split else "class-folders"
    return Dataset(root=str(root), layout=layout, records=tuple(records))


def load_manifest(csv_path: str | Path, source: str | None = None) -> Dataset:
    csv_path = Path(csv_path)
    base = csv_path.parent
    records = []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {(c or "").strip().lower(): c for c in (reader.fieldnames or [])}
        if "path" not in columns:
            raise DatasetError(f"{csv_path}: a manifest needs a 'path' column "
                               f"(and 'label'; optional 'patient', 'split', 'source'); found {list(columns)}")
        for line_no, row in enumerate(reader, start=2):
            def get(col: str) -> str:
                return (row.get(columns[col]) or "").strip() if col in columns else ""
            if not get("path"):
                continue
            path = Path(get("path"))
            label_text = get("label")
            try:
                label = parse_label(label_text) if label_text else None
            except DatasetError as exc:
                raise DatasetError(f"{csv_path}, line {line_no}: {exc}") from None
            split = get("split").lower() or None
            if split is not None and split not in SPLITS:
                raise DatasetError(f"{csv_path}, line {line_no}: split {split!r} is not one of {SPLITS}")
            if "source" in columns and not get("source"):
                raise DatasetError(f"{csv_path}, line {line_no}: the source column is empty; give every "
                                   "row a source, or drop the column to use the folder's name")
            records.append(Record(path=str(path if path.is_absolute() else base / path),
                                  label=label, patient=get("patient") or None, split=split,
                                  source=get("source") or source or base.resolve().name))
    if not records:
        raise DatasetError(f"{csv_path}: the manifest lists no images")
    return Dataset(root=str(base), layout="manifest", records=tuple(records))


def load_unlabeled(folder: str | Path, source: str | None = None) -> Dataset:
    """Every image file under ``folder``, without labels (``source``: the name its records carry)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"not a folder: {folder}")
    files = list_image_files(folder)
    if not files:
        raise DatasetError(f"no image files (.png, .jpg, .tif, .dcm, ...) found under {folder}")
    return Dataset(root=str(folder), layout="unlabeled", records=tuple(Record(path=p, source=source) for p in files))


def load_dataset(path: str | Path, source: str | None = None) -> Dataset:
    """Load a labeled dataset from a folder (layouts a, b) or a CSV manifest (c).

    ``source``: the name its records carry (default: the folder's name).
    """
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        return load_manifest(path, source)
    if not path.exists():
        raise DatasetError(
            f"data not found: {path}. Point --data (or $COVIDCT_DATA) at the COVID-CT folder, "
            "a folder with COVID/ and NonCOVID/ subfolders, or a CSV manifest (path,label).")
    if not path.is_dir():
        raise DatasetError(f"{path} is neither a folder nor a .csv manifest")
    class_dirs = _find_class_dirs(path)
    if len(class_dirs) != 2:
        raise DatasetError(
            f"{path} is not a labeled dataset: expected subfolders COVID/ and NonCOVID/ "
            "(or CT_COVID/ and CT_NonCOVID/), or pass a CSV manifest with columns path,label")
    with_split = (path / "Data-split").is_dir()
    dataset = _load_class_folders(path, class_dirs, with_split, source or path.resolve().name)
    if not dataset.records:
        raise DatasetError(f"no image files found in {class_dirs[COVID_LABEL]} or {class_dirs[NONCOVID_LABEL]}")
    return dataset


def load_datasets(paths: str | Path | Sequence[str | Path], labeled: bool = True) -> Dataset:
    """One labeled dataset from several (see load_dataset); each source's name must be unique.
    ``labeled`` False: a folder that is no labeled layout is read as every image under it, without
    labels (extract: features for later prediction, or a site's unlabeled images)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise DatasetError("no data given; pass --data PATH")
    seen: dict[Path, str] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise DatasetError(f"--data {path} is given twice (also as {seen[resolved]})")
        seen[resolved] = str(path)
    datasets = [load_dataset(p) if labeled or not _is_unlabeled_folder(p) else
                load_unlabeled(p, Path(p).resolve().name) for p in paths]
    if len(datasets) == 1:
        return datasets[0]
    owner: dict[str, str] = {}
    for path, dataset in zip(paths, datasets):
        for source in dataset.sources:
            if source in owner:
                raise DatasetError(f"two datasets are called {source!r} ({owner[source]} and {path}); "
                                   "rename a folder, or give a manifest with a source column")
        owner.update({source: str(path) for source in dataset.sources})
    return Dataset(root="; ".join(d.root for d in datasets), layout="+".join(d.layout for d in datasets),
                   records=tuple(r for d in datasets for r in d.records))


def _is_unlabeled_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and len(_find_class_dirs(path)) != 2


def with_keys(records: Iterable[Record]) -> list[Record]:
    """Fill in each record's SHA-256 key; a file that cannot be read gets ``error`` instead."""
    out = []
    for rec in records:
        if rec.key or rec.error:
            out.append(rec)
            continue
        try:
            out.append(replace(rec, key=sha256_file(rec.path)))
        except OSError as exc:
            out.append(replace(rec, error=f"cannot read file: {exc.strerror or exc}"))
    return out
