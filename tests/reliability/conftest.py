"""Hypothesis runs derandomized and without an example database, so CI and every machine draw the
same examples and a failure reproduces from the test name alone."""

from hypothesis import settings

settings.register_profile("eggs-ptp", max_examples=50, derandomize=True, database=None, deadline=None)
settings.load_profile("eggs-ptp")
