"""Suite files: a YAML grid of methods x datasets x seeds, fully validated before anything runs.

One module per job (docs/design.md):

- :mod:`~harness.run.suite.reading`: YAML through a safe loader, and ``include:`` chains;
- :mod:`~harness.run.suite.checks`: the toolkit that turns a bad value into one line naming the file
  and the field (:class:`SuiteError`);
- :mod:`~harness.run.suite.model`: what a suite is (:class:`Suite`, :class:`Trial`) and the key that
  identifies a trial's science (:func:`trial_key`);
- :mod:`~harness.run.suite.load`: the schema, checked field by field (:func:`load_suite`).

The schema is documented in ``suites/README.md``.
"""

from harness.run.suite.checks import SuiteError
from harness.run.suite.load import DEFAULT_CHECKPOINTS, MAX_TRIALS, TOP_KEYS, load_suite
from harness.run.suite.model import (NOT_SCIENCE, DatasetEntry, MethodEntry, Resources, Suite, Trial,
                                 science_config, trial_key)

__all__ = ["DEFAULT_CHECKPOINTS", "MAX_TRIALS", "NOT_SCIENCE", "TOP_KEYS", "DatasetEntry",
           "MethodEntry", "Resources", "Suite", "SuiteError", "Trial", "load_suite",
           "science_config", "trial_key"]
