"""fmbench: a benchmarking harness for Flow Matching and diffusion generative models.

Layout (docs/design.md §1.2): ``core/`` the science (paths, methods, solvers, likelihood,
metrics, training, evaluation), with ``datasets/`` and ``models/`` beside it, none of which imports
Ray or MLflow; ``run/`` suites, trials, the Ray scheduler and the MLflow record; ``report/`` tables
and figures from the record; ``cli.py`` the ``fmbench`` command
(``trial_command.py`` its ``trial``).
"""

__version__ = "0.1.0"

# Bumped whenever a change alters numbers a trial produces (losses, samples, metrics), so trial keys
# (hash of resolved config + science version) never match results of older science (docs/design.md §4.1).
SCIENCE_VERSION = "5"
# 2: evaluation noise, Hutchinson probes and dequantization are drawn per chunk of batch_size from
#    a seed derived from (eval seed, part, chunk) (harness.core.shards), so sharded and single-task
#    evaluations agree exactly; mean NFEs weight each batch solve by its examples; NLL standard
#    errors are over examples (each one estimate over its dequantization draws).
# 3: networks' time code works on t's own scale by default (model option time_scale = 1; it was a
#    fixed 1000, which made fields wiggle in t and inflated dopri5 NFE ~6x).
# 4: the paper's protocol (Lipman et al. 2022, App. E): `score-matching` is the paper's VP baseline with a network
#    that outputs the score (the VE method is `score-matching-ve`, sigma_max from the data for every
#    dataset); bits/dim is the importance-weighted estimate over K dequantization draws.
# 5: a solver's one time reaches the network as one time (not a copy per example), so its time code
#    is computed once per call and broadcast: the same field up to float rounding (~3e-8), half
#    the multiply-adds of a 2-D MLP's sampling.
