"""The lesion bench's cost rows: a 300-slice study and 1,000 MosMed slices through `cli.py predict` in fresh
processes on fresh features folders, wall time and peak memory (bench/lesions.py)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import REPO, SHARED, child_run

DATA = SHARED / "data"


def cost_rows(path: Path) -> list[tuple[str, ...]]:
    """Per slice, a 300-slice study, and predict's peak memory on 1,000 slices (fresh features folders)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        study = big_study(Path(tmp) / "study", 300)
        for maps in (False, True):
            seconds, peak = run_predict(path, study, Path(tmp) / f"f{maps}", ["--studies"]
                                        + (["--lesion-maps", str(Path(tmp) / "maps")] if maps else []))
            rows.append((f"a 300-slice DICOM study{' with maps and its NIfTI' if maps else ''}", f"{seconds:.1f} s",
                         f"{1000 * seconds / 300:.0f} ms", f"{peak:.2f} GB"))
        mosmed = sorted((DATA / "mosmed-slices").rglob("*.jpg"))[:1000]
        folder = Path(tmp) / "thousand"
        folder.mkdir()
        for p in mosmed:
            (folder / p.name).symlink_to(p)
        for maps in (False, True):
            seconds, peak = run_predict(path, folder, Path(tmp) / f"g{maps}",
                                        ["--lesion-maps", str(Path(tmp) / "maps2")] if maps else [])
            rows.append((f"predict 1,000 MosMed slices{' with --lesion-maps' if maps else ''}", f"{seconds:.0f} s",
                         f"{seconds:.0f} ms", f"{peak:.2f} GB"))
    return rows


def run_predict(model: Path, folder: Path, features: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak memory (GB) of a predict in a fresh process."""
    seconds, peak = child_run([sys.executable, str(REPO / "cli.py"), "predict", str(folder), "--model", str(model),
                               "--features-dir", str(features), "--out", str(features / "p.csv"), "--offline", *extra],
                              cwd=REPO)
    return seconds, peak / 1024


def big_study(folder: Path, n: int) -> Path:
    """A ``n``-slice series made of the COVID study's real slices (JPEG Lossless), repeated along z with new
    positions and UIDs: a realistic decode, as a full chest CT of 1-2 mm slices."""
    import pydicom
    from pydicom.uid import generate_uid

    sources = sorted((DATA / "dicom-studies" / "COVID").rglob("*.dcm"))
    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    for i in range(n):
        ds = pydicom.dcmread(sources[i % len(sources)])
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPInstanceUID = series, study, generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], -300.0 + 1.0 * i]
        ds.save_as(folder / f"slice{i:04d}.dcm")
    return folder
