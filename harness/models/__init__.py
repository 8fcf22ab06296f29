"""Networks that take (x, t) and return a tensor shaped like x: velocity, noise or score.

Every model is a ``torch.nn.Module`` class whose constructor takes ``data_shape`` first and then
keyword options with defaults; suites choose one by name and pass options through
:func:`build_model`, which rejects unknown options instead of silently ignoring a typo.
Registry metadata ``kind`` says which data a model accepts: ``"vector"`` (D,) or ``"image"`` (C, H, W).
"""

from __future__ import annotations

import inspect

import torch

from harness.errors import ConfigError
from harness.models.mlp import MLP
from harness.models.unet import UNet
from harness.registry import Registry

MODELS: Registry[type[torch.nn.Module]] = Registry("model")

MODELS.register("mlp", MLP, kind="vector",
                summary="time-conditioned MLP for vector data (D,)")
MODELS.register("unet", UNet, kind="image",
                summary="DDPM-style U-Net with attention for images (C, H, W)")

_KIND_RANK = {"vector": 1, "image": 3}


def model_options(name: str) -> dict[str, object]:
    """The options model ``name`` accepts, with their defaults (from its constructor signature)."""
    params = list(inspect.signature(MODELS.get(name)).parameters.values())[1:]  # drop data_shape
    return {p.name: p.default for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def build_model(name: str, data_shape: tuple[int, ...], **options: object) -> torch.nn.Module:
    """Construct model ``name`` for examples of shape ``data_shape`` (e.g. (2,) or (3, 32, 32)).

    Raises UnknownNameError for an unknown model and ConfigError for an unknown option, an invalid
    value, or data of the wrong rank for the model's kind.
    """
    entry = MODELS.entry(name)
    valid = model_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
                          f"valid: {', '.join(valid)}")
    data_shape = tuple(int(s) for s in data_shape)
    rank = _KIND_RANK.get(entry.meta.get("kind", ""))
    if rank is not None and len(data_shape) != rank:
        raise ConfigError(f"model {name!r} is for {entry.meta['kind']} data of rank {rank}, "
                          f"got data shape {data_shape}")
    # YAML gives lists; the constructors take tuples for sequence options.
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return entry.obj(data_shape, **options)


def default_model_for(data_shape: tuple[int, ...]) -> str:
    """"mlp" for vector data (D,), "unet" for images (C, H, W)."""
    if len(data_shape) == 1:
        return "mlp"
    if len(data_shape) == 3:
        return "unet"
    raise ConfigError(f"no default model for data of shape {tuple(data_shape)}; "
                      "expected (D,) or (C, H, W)")


__all__ = ["MODELS", "MLP", "UNet", "build_model", "default_model_for", "model_options"]
