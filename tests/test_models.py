"""Model registry: every registered network maps (x, t) to a tensor shaped like x, trainably."""

from __future__ import annotations

import pytest
import torch

from harness.errors import ConfigError, UnknownNameError
from harness.models import MODELS, build_model, default_model_for, model_options
from harness.models.embedding import batch_times, sinusoidal_embedding
from harness.models.unet import SelfAttention, group_count

TINY_UNET = dict(channels=16, groups=8, num_res_blocks=1, num_heads=2)

# Small configurations per registered model; a newly registered model must add its own here.
CASES: dict[str, list[tuple[tuple[int, ...], dict]]] = {
    "mlp": [((2,), dict(hidden=32, depth=2, time_dim=16)),
            ((5,), dict(hidden=16, depth=1, time_dim=8, activation="softplus"))],
    "unet": [((1, 8, 8), dict(TINY_UNET, attention_resolutions=(4,))),
             ((1, 28, 28), dict(TINY_UNET, attention_resolutions=(14,))),
             ((3, 32, 32), dict(TINY_UNET, channel_mult=(1, 2))),
             ((1, 28, 28), dict(TINY_UNET, channel_mult=(1, 1, 1, 1), attention_resolutions=(7,)))],
}
PARAMS = [pytest.param(name, shape, opts, id=f"{name}-{'x'.join(map(str, shape))}-{i}")
          for name, cases in CASES.items() for i, (shape, opts) in enumerate(cases)]
IMAGE_PARAMS = [p for p in PARAMS if MODELS.entry(p.values[0]).meta["kind"] == "image"]


def make(name, shape, opts, seed=0):
    torch.manual_seed(seed)
    return build_model(name, shape, **opts)


def perturb_zero_params(model, seed=1):
    """Give zero-initialised tensors (the U-Net's last conv) random values, so the output, and
    every gradient behind it, is no longer identically zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def inputs(shape, batch=3, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=gen), torch.rand(batch, generator=gen)


def test_every_registered_model_has_cases_and_a_kind():
    assert set(CASES) == set(MODELS.names())
    assert MODELS.entry("mlp").meta["kind"] == "vector"
    assert MODELS.entry("unet").meta["kind"] == "image"


@pytest.mark.parametrize("name,shape,opts", PARAMS)
def test_shape_dtype_and_scalar_time(name, shape, opts):
    model = perturb_zero_params(make(name, shape, opts))
    x, t = inputs(shape)
    out = model(x, t)
    assert out.shape == x.shape and out.dtype == torch.float32
    # A scalar t (as solvers pass) means the same time for every example.
    torch.testing.assert_close(model(x, torch.tensor(0.3)), model(x, torch.full((3,), 0.3)))
    torch.testing.assert_close(model(x, 0.3), model(x, torch.full((3,), 0.3)))
    # ...and its time code is computed once, then broadcast over the batch.
    rows = []
    model.time_embed.register_forward_hook(lambda module, args, out: rows.append(len(out)))
    model(x, torch.tensor(0.3))
    model(x, t)
    assert rows == [1, 3]
    # float64 times (from float64 solver grids) must not break a float32 network.
    assert model(x, t.double()).dtype == torch.float32


@pytest.mark.parametrize("name,shape,opts", PARAMS)
def test_gradients_reach_every_parameter(name, shape, opts):
    model = make(name, shape, opts)
    x, t = inputs(shape)
    if name == "unet":
        # Zero final conv: only it gets a gradient at first, and it does get one.
        model(x, t).square().mean().add(model(x, t).sum()).backward()
        assert model.conv_out.weight.grad.abs().sum() > 0
        model.zero_grad()
    perturb_zero_params(model)
    (model(x, t) - x).square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name,shape,opts", PARAMS)
def test_output_depends_on_time(name, shape, opts):
    model = perturb_zero_params(make(name, shape, opts))
    x, _ = inputs(shape)
    a, b = model(x, 0.2), model(x, 0.7)
    assert not torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("name,shape,opts", PARAMS)
def test_deterministic_under_fixed_seed(name, shape, opts):
    x, t = inputs(shape)
    first = make(name, shape, opts, seed=5)
    second = make(name, shape, opts, seed=5)
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    assert torch.equal(perturb_zero_params(first)(x, t), perturb_zero_params(second)(x, t))
    third = perturb_zero_params(make(name, shape, opts, seed=6))
    assert not torch.equal(third(x, t), first(x, t))


@pytest.mark.parametrize("name,shape,opts", PARAMS)
def test_bf16_autocast_on_cpu(name, shape, opts):
    model = perturb_zero_params(make(name, shape, opts))
    x, t = inputs(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert (out.float() - model(x, t)).abs().max() < 0.5  # bf16 keeps ~3 significant digits


@pytest.mark.parametrize("name,shape,opts", IMAGE_PARAMS)
def test_channels_last_matches_contiguous(name, shape, opts):
    model = perturb_zero_params(make(name, shape, opts))
    x, t = inputs(shape)
    ref = model(x, t)
    out = model(x.contiguous(memory_format=torch.channels_last), t)
    assert (out - ref).abs().max() < 1e-5
    model.to(memory_format=torch.channels_last)
    assert (model(x.contiguous(memory_format=torch.channels_last), t) - ref).abs().max() < 1e-5


def test_unet_starts_as_the_zero_function():
    shape, opts = CASES["unet"][0]
    x, t = inputs(shape)
    assert torch.equal(make("unet", shape, opts)(x, t), torch.zeros_like(x))


def test_unknown_option_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'chanels'.*valid: channels, channel_mult"):
        build_model("unet", (1, 8, 8), chanels=16)
    with pytest.raises(ConfigError, match="'width'"):
        build_model("mlp", (2,), width=3)
    with pytest.raises(UnknownNameError, match="mlp, unet"):
        build_model("transformer", (2,))


def test_invalid_values_and_ranks_are_config_errors():
    with pytest.raises(ConfigError, match="rank 3"):
        build_model("unet", (2,))
    with pytest.raises(ConfigError, match="rank 1"):
        build_model("mlp", (1, 8, 8))
    with pytest.raises(ConfigError, match="activation"):
        build_model("mlp", (2,), activation="swish2")
    with pytest.raises(ConfigError, match="num_heads"):
        build_model("unet", (1, 8, 8), channels=16, num_heads=3, attention_resolutions=(8,))
    with pytest.raises(ConfigError, match="dropout"):
        build_model("unet", (1, 8, 8), channels=16, dropout=1.5)


def test_yaml_lists_are_accepted_and_options_listed():
    model = build_model("unet", (1, 8, 8), channels=16, groups=8, channel_mult=[1, 2],
                        attention_resolutions=[4])
    assert any(isinstance(m, SelfAttention) for m in model.modules())
    assert model_options("mlp") == dict(hidden=256, depth=3, time_dim=64, activation="silu",
                                        time_scale=1.0)


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_attention_toggle_changes_parameter_count():
    base = dict(channels=16, groups=8, num_res_blocks=1)
    plain = build_model("unet", (1, 8, 8), attention_resolutions=(), **base)
    attended = build_model("unet", (1, 8, 8), attention_resolutions=(8, 4), **base)
    assert not any(isinstance(m, SelfAttention) for m in plain.modules())
    assert count(attended) > count(plain)


def test_parameter_count_grows_with_channels():
    small = build_model("unet", (1, 8, 8), channels=16, groups=8, num_res_blocks=1)
    large = build_model("unet", (1, 8, 8), channels=32, groups=8, num_res_blocks=1)
    assert count(large) > count(small)
    assert count(build_model("mlp", (2,), hidden=64)) > count(build_model("mlp", (2,), hidden=32))


def test_default_model_for_shapes():
    assert default_model_for((2,)) == "mlp"
    assert default_model_for((3, 32, 32)) == "unet"
    with pytest.raises(ConfigError):
        default_model_for((4, 4))


def test_group_count_divides_width():
    assert group_count(64, 32) == 32
    assert group_count(48, 32) == 24
    assert group_count(3, 32) == 3
    assert group_count(7, 4) == 1


def test_time_embedding_shapes_and_scale():
    t = torch.tensor([0.5, 0.5 + 1e-3])
    emb = sinusoidal_embedding(t, 64)
    assert emb.shape == (2, 64)
    # t's own scale: dt = 1e-3 moves the fastest component by ~1e-3 (smooth in t); scale 1000
    # (DDPM's convention) moves it by ~1 rad. tests/test_time_code.py checks what that does to NFE.
    assert (emb[0] - emb[1]).abs().max() < 2e-3
    assert (sinusoidal_embedding(t, 64, scale=1000.0)[0]
            - sinusoidal_embedding(t, 64, scale=1000.0)[1]).abs().max() > 0.3
    assert sinusoidal_embedding(t, 7).shape == (2, 7)
    assert batch_times(0.1, 4, torch.zeros(1)).shape == (1,)  # broadcast, computed once
    assert batch_times(torch.rand(4), 4, torch.zeros(1)).shape == (4,)
    with pytest.raises(ValueError):
        batch_times(torch.zeros(3), 4, torch.zeros(1))


def test_num_head_channels_sets_heads_per_width_as_adm():
    """Lipman et al. (2022) Table 3 gives heads of 64 channels: each attention layer then has
    width // 64 heads, whatever num_heads says (ADM's num_head_channels)."""
    model = build_model("unet", (1, 8, 8), channels=16, groups=8, channel_mult=(1, 2),
                        attention_resolutions=(8, 4), num_heads=1, num_head_channels=8)
    heads = sorted((m.qkv.in_channels, m.num_heads) for m in model.modules()
                   if isinstance(m, SelfAttention))
    assert heads and all(width // 8 == n for width, n in heads)
    assert {n for _, n in heads} == {2, 4}
    # Same weights, different head split: a different function, so the option is not cosmetic.
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    one_head = build_model("unet", (1, 8, 8), channels=16, groups=8, channel_mult=(1, 2),
                           attention_resolutions=(8, 4), num_heads=1)
    torch.nn.init.normal_(model.conv_out.weight)  # the output conv starts at zero
    one_head.load_state_dict(model.state_dict())
    assert not torch.allclose(model(x, t), one_head(x, t))
    with pytest.raises(ConfigError, match="num_head_channels=12 must divide"):
        build_model("unet", (1, 8, 8), channels=16, groups=8, attention_resolutions=(8,),
                    num_head_channels=12)
    with pytest.raises(ConfigError, match="num_head_channels must be a positive integer"):
        build_model("unet", (1, 8, 8), channels=16, num_head_channels=0)
