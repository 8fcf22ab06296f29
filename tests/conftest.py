"""Shared fixtures: everything runs on CPU, float64 where closed forms are compared."""

import pytest
import torch

from harness.methods import METHODS, build_method


@pytest.fixture(params=METHODS.names())
def method_name(request):
    return request.param


@pytest.fixture
def method(method_name):
    # A modest VE prior keeps the Gaussian tests quick without changing what they check.
    options = {"sigma_max": 5.0} if method_name == "score-matching" else {}
    return build_method(method_name, **options)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
