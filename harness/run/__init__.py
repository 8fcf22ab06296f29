"""Running the science at scale: suites and their trial keys, one trial end to end, the Ray tasks
and the driver that schedules them, data-parallel training, the MLflow record and its store.

Depends on :mod:`harness.core`, never the other way round (docs/design.md §1.2).
"""
