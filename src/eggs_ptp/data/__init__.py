"""Text sources, the default corpus split, and calibration windows."""

from eggs_ptp.data.calibration import NO_START, CalibrationSet, DataError, SequenceStart, sample_windows
from eggs_ptp.data.sources import DEFAULT_TEXT, TextSource, load_text

__all__ = [
    "DEFAULT_TEXT",
    "NO_START",
    "CalibrationSet",
    "DataError",
    "SequenceStart",
    "TextSource",
    "load_text",
    "sample_windows",
]
