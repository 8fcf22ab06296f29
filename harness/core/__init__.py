"""The science: probability paths, methods (parameterisation and loss), ODE solvers, sampling,
likelihood, metrics, training and evaluation, each a pure function of tensors and seeds.

Nothing here imports Ray or MLflow (``tests/test_architecture.py`` checks it), so the numbers can
be reproduced, tested and reused without a cluster or a tracking store (docs/design.md §1.2).
"""
