"""The networks' time code: t on its own scale by default, so fields are smooth in t and adaptive
solvers take few steps (docs/design.md §2.4); ``time_scale`` is a recorded model option in the trial key.

Thresholds come from measurements on this code (dopri5, atol = rtol = 1e-5): untrained networks take
20 evaluations with the default and 104-302 with time_scale = 1000; a 300-step fm-ot MLP on
8gaussians takes 38-44 against 296-356, and its mean |dv/dt| / |v| over t in [0, 0.9] is ~5 against
15-22. Each test also checks that time_scale = 1000 fails its bound, so the bound can catch a
regression to the old code.
"""

import json

import pytest
import torch

from harness import SCIENCE_VERSION
from harness.datasets import load_dataset
from harness.errors import CheckpointError, ConfigError
from harness.core.evaluate import sample
from harness.core.methods import build_method
from harness.models import build_model, model_options
from harness.models.embedding import DEFAULT_TIME_SCALE, MAX_PERIOD, sinusoidal_embedding
from harness.run.suite import SuiteError, load_suite, science_config, trial_key
from harness.core.train import TrainConfig, train
from harness.run.trial import TrialSpec, prepare, resolve, train_trial

TOL = 1e-5  # the paper's dopri5 tolerance, the harness default (README, "What a trial measures")
UNTRAINED_NFE_BOUND = 40  # measured 20 with the default, >= 104 with time_scale = 1000
TRAINED_NFE_BOUND = 80  # measured 38-44 with the default, 296-356 with time_scale = 1000
ROUGHNESS_BOUND = 10.0  # mean |dv/dt| / |v|: measured ~5 with the default, 15-22 with 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def dopri5_nfe(net, noise):
    """Network evaluations of one fm-ot dopri5 sample solve from ``noise`` (the harness's counter)."""
    _, nfe = sample(build_method("fm-ot"), net.eval(), noise, tol=TOL)
    return nfe


def untrained_mlp(**options):
    torch.manual_seed(0)
    return build_model("mlp", (2,), hidden=256, depth=3, **options)


def untrained_unet(**options):
    """A small U-Net for digits-shaped (1, 8, 8) input; its zero-initialised last conv gets
    PyTorch's default init, or the untrained network would be the constant zero field."""
    torch.manual_seed(0)
    net = build_model("unet", (1, 8, 8), channels=16, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), groups=8, num_heads=2, **options)
    net.conv_out.reset_parameters()
    return net


def test_default_time_code_is_t_on_its_own_scale():
    assert DEFAULT_TIME_SCALE == 1.0
    assert model_options("mlp")["time_scale"] == 1.0
    assert model_options("unet")["time_scale"] == 1.0
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    torch.testing.assert_close(sinusoidal_embedding(1000 * t, 64),
                               sinusoidal_embedding(t, 64, scale=1000.0))
    # The fastest frequency is 1 rad per unit t (torchcfm's timestep_embedding at max_period
    # 10000 on t in [0, 1]): below pi/2, so no component wraps around on [0, 1].
    assert MAX_PERIOD == 10_000.0
    grid = torch.linspace(0, 1, 1001)
    emb = sinusoidal_embedding(grid, 64)
    steps = emb[1:] - emb[:-1]
    assert (steps[:, :32] <= 0).all()  # cos: decreasing
    assert (steps[:, 32:] >= 0).all()  # sin: increasing
    # ... and still separates solver times 1e-3 apart, far above float32 resolution.
    close = sinusoidal_embedding(torch.tensor([0.5, 0.501]), 64)
    assert 5e-4 < (close[0] - close[1]).abs().max() < 2e-3


def test_time_scale_changes_the_network_and_rejects_bad_values():
    x, t = torch.randn(4, 2), torch.rand(4)
    assert not torch.allclose(untrained_mlp()(x, t), untrained_mlp(time_scale=1000.0)(x, t))
    for bad in (0, -1.0, float("inf"), float("nan"), "1000", True):
        with pytest.raises(ConfigError, match="time_scale must be a positive finite number"):
            build_model("mlp", (2,), time_scale=bad)
        with pytest.raises(ConfigError, match="time_scale"):
            build_model("unet", (1, 8, 8), channels=16, groups=8, time_scale=bad)


@pytest.mark.parametrize("make,noise_shape", [(untrained_mlp, (256, 2)),
                                              (untrained_unet, (16, 1, 8, 8))],
                         ids=["mlp", "unet"])
def test_untrained_network_needs_few_dopri5_steps(make, noise_shape):
    noise = torch.randn(*noise_shape, generator=torch.Generator().manual_seed(0))
    default = dopri5_nfe(make(), noise)
    ddpm_scale = dopri5_nfe(make(time_scale=1000.0), noise)
    assert default < UNTRAINED_NFE_BOUND, default
    assert ddpm_scale > 2 * UNTRAINED_NFE_BOUND, ddpm_scale  # the option matters


def trained_fm_ot(time_scale):
    """fm-ot on 8gaussians, 300 steps of a 128-wide MLP (~1-3 s): the EMA network."""
    ds = load_dataset("8gaussians", seed=0)
    torch.manual_seed(0)
    net = build_model("mlp", ds.shape, hidden=128, depth=3, time_scale=time_scale)
    cfg = TrainConfig(steps=300, batch_size=256, warmup_steps=20, ema_decay=0.99, log_every=50)
    return train(build_method("fm-ot"), ds, net, cfg).ema.eval()


def roughness(net, h=1e-3):
    """Mean over t in [0, 0.9] of E|v(x, t + h) - v(x, t)| / h divided by E|v(x, t)|, at fixed x.
    Stops short of t = 1, where the true OT field itself sharpens onto the data's modes."""
    x = 2 * torch.randn(256, 2, generator=torch.Generator().manual_seed(2))
    ratios = []
    with torch.no_grad():
        for t in torch.linspace(0.0, 0.9, 91).tolist():
            v = net(x, t)
            dv = (net(x, t + h) - v) / h
            ratios.append(dv.norm(dim=1).mean() / v.norm(dim=1).mean())
    return torch.stack(ratios).mean().item()


def test_trained_fm_ot_field_is_smooth_in_t():
    noise = torch.randn(512, 2, generator=torch.Generator().manual_seed(1))
    smooth = trained_fm_ot(DEFAULT_TIME_SCALE)
    rough = trained_fm_ot(1000.0)
    assert dopri5_nfe(smooth, noise) < TRAINED_NFE_BOUND
    assert roughness(smooth) < ROUGHNESS_BOUND
    # The old convention fails both bounds: they would catch a return to it.
    assert dopri5_nfe(rough, noise) > 2 * TRAINED_NFE_BOUND
    assert roughness(rough) > ROUGHNESS_BOUND


def test_time_scale_is_in_the_trial_key_and_the_resolved_config(tmp_path):
    base = TrialSpec("fm-ot", "8gaussians", model="mlp",
                     model_options={**model_options("mlp"), "time_scale": 1.0})
    ddpm = TrialSpec("fm-ot", "8gaussians", model="mlp",
                     model_options={**model_options("mlp"), "time_scale": 1000.0})
    assert science_config(base)["model_options"]["time_scale"] == 1.0
    assert science_config(base)["science_version"] == SCIENCE_VERSION
    assert trial_key(base) != trial_key(ddpm)

    # Suites: the default is resolved into every trial; a suite may set it; bad values are refused.
    head = "name: t\nmethods: [fm-ot]\ndatasets: [8gaussians]\nseeds: [0]\n"
    suite = tmp_path / "s.yaml"
    suite.write_text(head)
    [default] = load_suite(suite).trials()
    assert default.spec.model_options["time_scale"] == 1.0
    suite.write_text(head + "model: {vector: {time_scale: 1000}}\n")
    [scaled] = load_suite(suite).trials()
    assert scaled.spec.model_options["time_scale"] == 1000.0 and scaled.key != default.key
    suite.write_text(head + "model: {vector: {time_scale: 0}}\n")
    with pytest.raises(SuiteError, match=r"model\.vector.*time_scale") as info:
        load_suite(suite)
    assert "\n" not in str(info.value)

    # fmbench trial (no model options given) records the default in config.json's model_options.
    _, config = resolve(TrialSpec("fm-ot", "8gaussians"), load_dataset("8gaussians", seed=0))
    assert json.loads(json.dumps(config))["model_options"]["time_scale"] == 1.0


def test_a_checkpoint_of_the_old_time_code_is_not_resumed(tmp_path):
    """Same weight shapes, other time code: loading it would silently give wrong numbers."""
    prep = prepare(TrialSpec("fm-ot", "8gaussians", train=TrainConfig(steps=1)))
    old = {**prep.config, "science_version": "2",
           "model_options": {k: v for k, v in prep.config["model_options"].items()
                             if k != "time_scale"}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    written = (tmp_path / "config.json").read_text()
    (tmp_path / "checkpoint.pt").write_bytes(b"never read")
    with pytest.raises(CheckpointError, match="written for another network") as info:
        train_trial(prep, tmp_path)
    assert "\n" not in str(info.value) and "science_version 2" in str(info.value)
    assert (tmp_path / "config.json").read_text() == written  # left as it was
