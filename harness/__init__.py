"""fmbench: a benchmarking harness for Flow Matching and diffusion generative models.

The science core (paths, methods, solvers, likelihood, metrics, datasets, models, training,
evaluation) imports neither Ray nor MLflow; scheduling and tracking live in their own modules.
"""

__version__ = "0.1.0"

# Bumped whenever a change alters numbers a trial produces (losses, samples, metrics), so trial keys
# of later issues (hash of resolved config + science version) never match results of older science.
SCIENCE_VERSION = "1"
