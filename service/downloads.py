"""The files a study's answer links to (its CSV rows, NIfTI label volume and label tables, DICOM SEG):
kept in a private temporary folder after the request, under an unguessable token, for the last
``keep`` requests only, and served to the same clients as the API (the bearer token applies)."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

TOKEN = re.compile(r"^[0-9a-f]{32}$")


class DownloadStore:
    def __init__(self, keep: int = 32):
        self.keep = keep
        self.root = Path(tempfile.mkdtemp(prefix="covidct-downloads-"))
        os.chmod(self.root, 0o700)
        self._folders: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def new_folder(self) -> tuple[str, Path]:
        """A fresh folder for one request's files and its token; the oldest beyond ``keep`` are deleted."""
        token = secrets.token_hex(16)
        folder = self.root / token
        folder.mkdir(mode=0o700)
        with self._lock:
            self._folders[token] = folder
            while len(self._folders) > self.keep:
                _, old = self._folders.popitem(last=False)
                shutil.rmtree(old, ignore_errors=True)
        return token, folder

    def file(self, token: str, name: str) -> Path | None:
        """The file ``name`` of a request (a plain file inside its folder), None when there is none."""
        if not TOKEN.match(token):
            return None
        with self._lock:
            folder = self._folders.get(token)
        if folder is None:
            return None
        path = (folder / name).resolve()
        if folder.resolve() not in path.parents or not path.is_file():
            return None
        return path

    def url(self, token: str, path: Path) -> str:
        return f"/api/v1/files/{token}/{path.relative_to(self.root / token).as_posix()}"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
