"""The key index of a feature cache: key -> (segment, row), in SQLite beside the cache.

It spares a lookup from opening every segment. It is derived data: ``sync`` adds segments it
does not know (a writer killed between writing a segment and indexing it, an index deleted)
and forgets segments whose files are gone, so a lost or damaged index is rebuilt from the
segments. The first row of a key wins (INSERT OR IGNORE); later rows of the same key are
dead and compaction drops them. Keys are stored as 32 raw bytes.

SQLite serialises writers itself (WAL journal: readers do not wait for a writer), so appends
of concurrent processes need no lock of ours; compaction runs under the cache's writer lock.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from .segments import SegmentFolder

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segment (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS row (key BLOB PRIMARY KEY, segment INTEGER NOT NULL, pos INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS row_segment ON row (segment, pos);
"""
_IN_CHUNK = 500  # keys per "IN (...)" query, well under SQLite's variable limit


class IndexDamaged(Exception):
    """The index file is not a readable SQLite database."""


def _blobs(keys: Iterable[str | bytes]) -> list[bytes]:
    return [bytes.fromhex(k.decode() if isinstance(k, bytes) else k) for k in keys]


class KeyIndex:
    def __init__(self, path: Path, folder: SegmentFolder):
        self.path = path
        self.folder = folder

    @contextlib.contextmanager
    def _db(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, timeout=120, isolation_level=None)
        except sqlite3.OperationalError as exc:
            raise OSError(f"cannot open the cache index {self.path}: {exc}") from None
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # derived data: sync() repairs a lost tail
            conn.executescript(_SCHEMA)
            if write:
                conn.execute("BEGIN IMMEDIATE")
            yield conn
            if write:
                conn.execute("COMMIT")
        except (sqlite3.OperationalError, sqlite3.IntegrityError):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        except sqlite3.DatabaseError as exc:  # "file is not a database", a damaged page
            raise IndexDamaged(str(exc)) from None
        finally:
            conn.close()

    def delete(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    # -- keeping it in step with the segment files --------------------------------------
    def sync(self) -> None:
        """Index segments on disk that it lacks; forget those no longer on disk.

        The index is read before the folder is listed: a segment indexed by then is on disk
        unless it was really removed, so an append racing with this never looks "gone".
        Forgetting goes by name (ids of forgotten segments must not be trusted later).
        """
        with self._db() as db:
            known = {name for (name,) in db.execute("SELECT name FROM segment")}
        on_disk = self.folder.names()
        gone = known - set(on_disk)
        if gone:
            self.forget(sorted(gone))
        for name in on_disk:
            if name in known:
                continue
            try:
                keys = self.folder.read_keys(name)
            except FileNotFoundError:  # compacted away meanwhile
                continue
            if keys is not None:
                self.add(name, keys)

    def add(self, name: str, keys: Sequence[str | bytes] | np.ndarray) -> None:
        """Index one segment's rows (its keys in row order); an indexed segment is left alone."""
        with self._db(write=True) as db:
            if db.execute("SELECT 1 FROM segment WHERE name = ?", (name,)).fetchone():
                return
            seg = db.execute("INSERT INTO segment (name) VALUES (?)", (name,)).lastrowid
            db.executemany("INSERT OR IGNORE INTO row (key, segment, pos) VALUES (?, ?, ?)",
                           ((k, seg, i) for i, k in enumerate(_blobs(keys))))

    def replace(self, old: Sequence[str], new: str, keys: Sequence[bytes]) -> None:
        """After compaction: the rows of ``keys`` (raw, as ``rows_of`` gives them) now live in ``new`` at their list position,
        and the ``old`` segments are forgotten. One transaction: readers see before or after."""
        with self._db(write=True) as db:
            # A reader's sync may have indexed the new file already (serving none of its rows).
            db.execute("INSERT OR IGNORE INTO segment (name) VALUES (?)", (new,))
            (seg,) = db.execute("SELECT id FROM segment WHERE name = ?", (new,)).fetchone()
            db.executemany("UPDATE row SET segment = ?, pos = ? WHERE key = ?",
                           ((seg, i, k) for i, k in enumerate(keys)))
            for name in old:
                db.execute("DELETE FROM segment WHERE name = ?", (name,))

    def forget(self, names: Sequence[str]) -> None:
        """Drop segments (holding only dead rows) from the index before their files go."""
        with self._db(write=True) as db:
            for name in names:
                db.execute("DELETE FROM row WHERE segment = (SELECT id FROM segment WHERE name = ?)", (name,))
                db.execute("DELETE FROM segment WHERE name = ?", (name,))

    # -- queries --------------------------------------------------------------------------
    def locate(self, keys: Sequence[str]) -> dict[str, tuple[str, int]]:
        """key -> (segment name, row) for the keys that are present."""
        found: dict[str, tuple[str, int]] = {}
        wanted = list(dict.fromkeys(keys))
        with self._db() as db:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = _blobs(wanted[start:start + _IN_CHUNK])
                query = ("SELECT row.key, segment.name, row.pos FROM row JOIN segment ON row.segment = segment.id "
                         f"WHERE row.key IN ({','.join('?' * len(chunk))})")  # one statement: one snapshot
                for key, name, pos in db.execute(query, chunk):
                    found[key.hex()] = (name, pos)
        return found

    def keys(self) -> list[str]:
        with self._db() as db:
            return [k.hex() for (k,) in db.execute("SELECT key FROM row")]

    def __len__(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM row").fetchone()[0]

    def live_rows(self) -> dict[str, int]:
        """Segment name -> rows the index points at (0 for segments holding only dead rows)."""
        with self._db() as db:
            return dict(db.execute("SELECT segment.name, COUNT(row.key) FROM segment LEFT JOIN row "
                                   "ON row.segment = segment.id GROUP BY segment.id"))

    def rows_of(self, name: str) -> tuple[list[bytes], np.ndarray]:
        """The live keys of one segment (raw) and their rows, in row order."""
        with self._db() as db:
            rows = db.execute("SELECT key, pos FROM row WHERE segment = (SELECT id FROM segment WHERE name = ?) "
                              "ORDER BY pos", (name,)).fetchall()
        return [k for k, _ in rows], np.array([p for _, p in rows], dtype=np.int64)
