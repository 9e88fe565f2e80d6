"""Uploads: into a private temporary folder, within limits; zips unpacked safely.

A zip is refused whole when a member has an absolute path, a `..` component or is a symlink
(zip slip), when a member or the total would expand beyond the caps (zip bomb), or when it
holds more files than allowed. Every refusal is an UploadRejected with an HTTP status.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Iterator

from .settings import ServeSettings

CHUNK = 1 << 20


class UploadRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@contextmanager
def private_folder() -> Iterator[Path]:
    """A folder only this user can read, deleted with everything in it at the end."""
    folder = Path(tempfile.mkdtemp(prefix="covidct-upload-"))
    os.chmod(folder, 0o700)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def safe_name(name: str, index: int) -> str:
    """A file name without folders, kept recognisable; never empty or hidden."""
    base = PurePosixPath(name.replace("\\", "/")).name.lstrip(".") or f"upload-{index}"
    return f"{index:04d}-{base}"[:200]


def extract_zip(path: Path, into: Path, settings: ServeSettings, budget: list[int]) -> list[Path]:
    """Unpack ``path`` into ``into`` (see the module docstring); ``budget``: files left to accept."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise UploadRejected(400, f"{path.name[5:]}: not a readable zip file") from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > budget[0]:
            raise UploadRejected(413, f"too many files: more than {settings.max_files} in one request")
        total = 0
        for m in members:
            parts = PurePosixPath(m.filename.replace("\\", "/")).parts
            if m.filename.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
                raise UploadRejected(400, f"zip member {m.filename!r} points outside the archive; refused")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UploadRejected(400, f"zip member {m.filename!r} is a symlink; refused")
            if m.compress_size and m.file_size / m.compress_size > settings.zip_max_ratio:
                raise UploadRejected(413, f"zip member {m.filename!r} expands {m.file_size // max(m.compress_size, 1)}x;"
                                          " refused as a zip bomb")
            total += m.file_size
        if total > settings.zip_max_total_mb * 2**20:
            raise UploadRejected(413, f"zip expands to {total / 2**20:.0f} MB, more than {settings.zip_max_total_mb:g} MB")
        out = []
        root = into.resolve()
        for m in members:
            target = (into / PurePosixPath(m.filename.replace("\\", "/"))).resolve()
            if root not in target.parents:
                raise UploadRejected(400, f"zip member {m.filename!r} points outside the archive; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            written = 0
            with archive.open(m) as src, open(target, "wb") as dst:  # the sizes in the header may lie
                while block := src.read(CHUNK):
                    written += len(block)
                    if written > m.file_size or written > settings.zip_max_total_mb * 2**20:
                        raise UploadRejected(413, f"zip member {m.filename!r} is bigger than it says; refused")
                    dst.write(block)
            out.append(target)
        budget[0] -= len(members)
        return out
