"""Device choice: CUDA when present, CPU otherwise, with the same code on both."""

from __future__ import annotations

import torch

from harness.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks cuda if available (Ray sets CUDA_VISIBLE_DEVICES per task), else cpu."""
    base = name.split(":")[0]
    if base not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; valid: {', '.join(DEVICES)} (or cuda:N)")
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available on this machine")
    return torch.device(name)
