"""How the service runs and what it accepts: one ServeSettings."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from feature_extractor.errors import SettingsError

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    """Where the service listens and its limits.

    host, port : binding; anything but loopback needs a token.
    token : the bearer token (read from --token-file); None on loopback without one.
    max_request_mb : one request's upload size; bigger is refused with 413.
    max_files : files per request (zip members included).
    zip_max_ratio, zip_max_total_mb : zip-bomb caps: uncompressed/compressed per member and in total.
    keep_identifiers : patient identifiers from DICOM headers in responses (default: removed).
    heatmap_method : how the page's heatmaps are made (gradcam: linear heads only).
    max_batch, batch_wait_ms : dynamic batching: slices of concurrent requests that need the CNN
        run together, up to ``max_batch`` of them, the first waiting at most ``batch_wait_ms``.
    """

    host: str = LOOPBACK
    port: int = 8000
    token: str | None = None
    max_request_mb: float = 200.0
    max_files: int = 1000
    zip_max_ratio: float = 200.0
    zip_max_total_mb: float = 4096.0
    keep_identifiers: bool = False
    heatmap_method: str = "occlusion"
    max_batch: int = 32
    batch_wait_ms: float = 10.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.batch_wait_ms < 0:
            raise SettingsError("--max-batch must be at least 1 and --batch-wait-ms at least 0")
        if not is_loopback(self.host) and not self.token:
            raise SettingsError(f"serving on {self.host} (beyond this machine) needs --token-file: a file "
                                "holding the bearer token clients must send")

    @staticmethod
    def read_token(path: str | Path | None) -> str | None:
        if path is None:
            return None
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SettingsError(f"cannot read the token file {path}: {exc.strerror or exc}") from None
        if len(token) < 16:
            raise SettingsError(f"the token in {path} is too short: use 16 or more characters")
        return token
