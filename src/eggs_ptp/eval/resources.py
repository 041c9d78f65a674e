"""Peak resident memory over a stretch of work, sampled from /proc by a background thread.

``ru_maxrss`` only gives the whole process's lifetime peak, which hides the peak of one run among
several in a benchmark.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType

_STATUS = Path("/proc/self/status")


def current_rss_mb() -> float | None:
    """Resident memory now, or None where /proc is unavailable."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class PeakRss:
    """``with PeakRss() as peak: ...`` then ``peak.mb``; samples every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            now = current_rss_mb()
            if now is not None:
                self.mb = max(self.mb or 0.0, now)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()


__all__ = ["PeakRss", "current_rss_mb"]
