"""Speed-only training settings (compile, channels_last, pin_memory, fused_adam): each runs, and
each ends a short run where the default does, within float-rounding tolerance."""

import copy
from dataclasses import replace

import pytest
import torch

from harness.datasets import load_dataset
from harness.errors import ConfigError
from harness.core.methods import build_method
from harness.models import build_model
from harness.run.suite import load_suite, trial_key
from harness.core.train import TrainConfig, pins_batches, train
from harness.run.trial import TrialSpec

BASE = TrainConfig(steps=12, batch_size=64, warmup_steps=4, checkpoint_every=0, log_every=4)
ROUNDING = 1e-4
"""Largest parameter difference accepted after 12 steps: a reordered float sum differs by ~1e-7
per step, and Adam's normalised updates keep that from growing beyond a few lr-sized nudges."""


@pytest.fixture(scope="module")
def gaussians():
    return load_dataset("8gaussians", seed=0)


@pytest.fixture(scope="module")
def mlp(gaussians):
    torch.manual_seed(0)
    return build_model("mlp", gaussians.shape, hidden=32, depth=2)


def run(dataset, net, cfg, **kwargs):
    return train(build_method("fm-ot"), dataset, copy.deepcopy(net), cfg, **kwargs)


def max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def assert_same_losses(got, ref, **tol) -> None:
    """Logged losses are (step, loss) pairs: the steps must match exactly and the losses within
    ``tol``. Compared apart because pytest >= 9 refuses ``approx`` on nested sequences."""
    assert [s for s, _ in got] == [s for s, _ in ref] and len(ref) > 0
    assert [v for _, v in got] == pytest.approx([v for _, v in ref], **tol)


@pytest.mark.parametrize("setting, tol", [("fused_adam", ROUNDING), ("pin_memory", 0.0),
                                          ("channels_last", 0.0)])
def test_setting_matches_default_on_vectors(gaussians, mlp, setting, tol):
    # pin_memory and channels_last do nothing on CPU vectors: bitwise the same run.
    ref = run(gaussians, mlp, BASE)
    got = run(gaussians, mlp, replace(BASE, **{setting: True}))
    assert max_diff(got.net, ref.net) <= tol and max_diff(got.ema, ref.ema) <= tol
    assert_same_losses(got.losses, ref.losses, abs=ROUNDING)


def test_fused_adam_really_changes_the_kernel(gaussians, mlp):
    """Guards against the setting being silently ignored: fused and foreach round differently."""
    ref = run(gaussians, mlp, BASE)
    got = run(gaussians, mlp, replace(BASE, fused_adam=True))
    assert max_diff(got.net, ref.net) > 0.0


def test_channels_last_unet_matches_default():
    digits = load_dataset("digits", seed=0, download=False)
    torch.manual_seed(0)
    unet = build_model("unet", digits.shape, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                       attention_resolutions=(4,), groups=4)
    cfg = replace(BASE, steps=2, batch_size=4, log_every=1)
    ref = run(digits, unet, cfg)
    got = run(digits, unet, replace(cfg, channels_last=True))
    conv = next(m.weight for m in got.net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert max_diff(got.net, ref.net) <= ROUNDING
    assert_same_losses(got.losses, ref.losses, rel=1e-4)


def test_pins_batches_only_for_cuda():
    assert pins_batches(torch.device("cuda"), True)
    assert not pins_batches(torch.device("cuda"), False)
    assert not pins_batches(torch.device("cpu"), True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_setting_on_cuda_matches_default(gaussians, mlp):
    ref = run(gaussians, mlp, BASE, device="cuda")
    got = run(gaussians, mlp, replace(BASE, pin_memory=True, fused_adam=True, channels_last=True),
              device="cuda")
    assert max_diff(got.net, ref.net) <= ROUNDING


@pytest.mark.slow  # inductor compiles C++ kernels: ~20 s alone on 2 cores, minutes when shared
def test_compile_matches_default_and_checkpoints_plain_module(gaussians, mlp, tmp_path):
    """One compiled run (inductor takes seconds): it checkpoints the plain module's state dict,
    an uncompiled run resumes it, and the result matches an uncompiled, uninterrupted run."""
    ref = run(gaussians, mlp, BASE)
    compiled = replace(BASE, compile=True, checkpoint_every=6)
    half = run(gaussians, mlp, compiled, checkpoint_dir=tmp_path, stop_after=6)
    assert half.step == 6
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert not any(k.startswith("_orig_mod.") for k in saved["net"])
    assert saved["net"].keys() == mlp.state_dict().keys()
    done = run(gaussians, mlp, BASE, checkpoint_dir=tmp_path)  # compile off: still resumes
    assert done.resumed_from == 6 and done.step == BASE.steps
    assert max_diff(done.net, ref.net) <= ROUNDING and max_diff(done.ema, ref.ema) <= ROUNDING
    # An already-compiled network given to train() comes back as the plain module.
    again = run(gaussians, torch.compile(copy.deepcopy(mlp)), replace(BASE, steps=2))
    assert not hasattr(again.net, "_orig_mod")


def test_fused_adam_can_be_toggled_on_resume(gaussians, mlp, tmp_path):
    ref = run(gaussians, mlp, BASE)
    run(gaussians, mlp, replace(BASE, checkpoint_every=6), checkpoint_dir=tmp_path, stop_after=6)
    done = run(gaussians, mlp, replace(BASE, fused_adam=True), checkpoint_dir=tmp_path)
    assert done.resumed_from == 6 and max_diff(done.net, ref.net) <= ROUNDING


@pytest.mark.parametrize("setting", TrainConfig.SPEED_ONLY)
def test_speed_settings_leave_trial_and_resume_keys_alone(setting):
    spec = TrialSpec(method="fm-ot", dataset="8gaussians", train=BASE)
    toggled = replace(spec, train=replace(BASE, **{setting: True}))
    assert trial_key(toggled) == trial_key(spec)
    assert toggled.train.resume_key() == BASE.resume_key()
    # ...while a science setting still changes both.
    assert trial_key(replace(spec, train=replace(BASE, precision="bf16"))) != trial_key(spec)


@pytest.mark.parametrize("setting", TrainConfig.SPEED_ONLY)
def test_speed_settings_must_be_booleans(setting):
    with pytest.raises(ConfigError, match=f"training {setting} must be true or false"):
        TrainConfig(**{setting: 1})


def test_suite_training_section_sets_speed_settings(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmethods: [fm-ot]\ndatasets: [8gaussians]\n"
                    "training: {compile: true, fused_adam: true, pin_memory: true}\n")
    train_cfg = load_suite(path).trials()[0].spec.train
    assert (train_cfg.compile, train_cfg.fused_adam, train_cfg.pin_memory) == (True, True, True)
    assert train_cfg.channels_last is False
