"""How the service runs and what it accepts: one ServeSettings, its fields declared once (they make
`serve`'s options)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.records.explanation import METHODS as EXPLAIN_METHODS
from covidct_core.errors import SettingsError
from covidct_core.settings_schema import Settings, setting

LOOPBACK = "127.0.0.1"
MIN_TOKEN = 16  # characters of a bearer token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings(Settings):
    """Where the service listens and its limits (each field's help says what it does). ``token``: the
    bearer token, read from ``token_file`` (or given directly by a caller); None on loopback without
    one. ``zip_max_ratio``, ``zip_max_total_mb``: zip-bomb caps, uncompressed/compressed per member
    and in total."""

    host: str = setting(LOOPBACK, "Address to listen on. Anything but loopback needs --token-file.")
    port: int = setting(8000, "Port to listen on.", kind=int, low=1, high=65535)
    token_file: str | None = setting(None, "A file holding the bearer token every API call must send "
                                           "(Authorization: Bearer ...).", optional=True, metavar="FILE")
    max_request_mb: float = setting(200.0, "Largest upload per request; bigger ones get 413.", kind=float, low=0,
                                    low_open=True)
    max_files: int = setting(1000, "Most files per request, zip members included.", kind=int, low=1)
    zip_max_ratio: float = setting(200.0, "Largest uncompressed/compressed ratio of a zip member.", kind=float, low=1,
                                   cli=False)
    zip_max_total_mb: float = setting(4096.0, "Largest uncompressed size of a zip.", kind=float, low=0, low_open=True,
                                      cli=False)
    keep_identifiers: bool = setting(False, "Patient identifiers from DICOM headers in responses (default: removed).",
                                     kind=bool)
    heatmap_method: str = setting(EXPLAIN_METHODS[0], "How the page's heatmaps are made: occlusion (any classifier), "
                                                      "gradcam (linear heads only) or lesion (the lesion map).",
                                  choices=EXPLAIN_METHODS, option="--explain-method")
    max_batch: int = setting(32, "Dynamic batching: at most this many new slices of concurrent requests in one CNN "
                                 "batch.", kind=int, low=1, high=1024)
    batch_wait_ms: float = setting(10.0, "Dynamic batching: how long the first new slice waits for others to join "
                                         "its batch.", kind=float, low=0, high=1000)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.token_file is not None:
            object.__setattr__(self, "token", read_token(self.token_file))
        if not is_loopback(self.host) and not self.token:
            raise SettingsError(f"serving on {self.host} (beyond this machine) needs --token-file: a file "
                                "holding the bearer token clients must send")


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    if len(token) < MIN_TOKEN:
        raise SettingsError(f"the token in {path} is too short: use {MIN_TOKEN} or more characters")
    return token
