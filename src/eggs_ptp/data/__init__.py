"""Text sources, the default corpus split, and calibration windows."""

from eggs_ptp.data.calibration import CalibrationSet, DataError, sample_windows
from eggs_ptp.data.sources import DEFAULT_TEXT, TextSource, load_text

__all__ = ["DEFAULT_TEXT", "CalibrationSet", "DataError", "TextSource", "load_text", "sample_windows"]
