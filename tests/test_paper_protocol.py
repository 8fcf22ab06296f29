"""The paper suites resolve to the protocol of Lipman et al. (2022), arXiv 2210.02747.

The expected values are transcribed from the paper, not from the suites: Table 3 (U-Net and
optimisation per dataset), Appendix E.2 (precision, Adam, dequantization estimator, dopri5
tolerance, FID pipeline), Table 4 (K dequantization draws; its largest K gives Table 1's bits/dim)
and Appendix E.1 (the diffusion baselines' VP path and time cut-off).
"""

from __future__ import annotations

import pytest

from harness.core.methods import build_method
from harness.run.suite import load_suite

# Table 3 columns, plus the K of Table 4 and the precision of App. E.2.
TABLE3 = {
    "paper-cifar10": dict(channels=256, num_res_blocks=2, channel_mult=(1, 2, 2, 2),
                          num_head_channels=64, attention_resolutions=(16,), dropout=0.0,
                          batch_size=256, steps=391_000, lr=5e-4, lr_schedule="linear-decay",
                          warmup_steps=45_000, precision="fp32", dequant_draws=50),
    "paper-imagenet32": dict(channels=256, num_res_blocks=3, channel_mult=(1, 2, 2, 2),
                             num_head_channels=64, attention_resolutions=(16, 8), dropout=0.0,
                             batch_size=1024, steps=250_000, lr=1e-4, lr_schedule="linear-decay",
                             warmup_steps=20_000, precision="fp32", dequant_draws=15),
    "paper-imagenet64": dict(channels=192, num_res_blocks=3, channel_mult=(1, 2, 3, 4),
                             num_head_channels=64, attention_resolutions=(32, 16, 8), dropout=0.0,
                             batch_size=2048, steps=157_000, lr=1e-4, lr_schedule="constant",
                             warmup_steps=0, precision="bf16", dequant_draws=10),
}
MODEL_FIELDS = ("channels", "num_res_blocks", "channel_mult", "num_head_channels",
                "attention_resolutions", "dropout")
TRAIN_FIELDS = ("batch_size", "steps", "lr", "lr_schedule", "warmup_steps", "precision")


@pytest.mark.parametrize("name", sorted(TABLE3))
def test_paper_suite_matches_tables_3_and_4(name):
    suite = load_suite(f"suites/{name}.yaml")
    want = TABLE3[name]
    assert [m.name for m in suite.methods] == ["ddpm", "score-matching", "scoreflow",
                                               "fm-diffusion", "fm-ot"]  # Table 1's rows
    for trial in suite.iter_trials():
        spec = trial.spec
        got_model = {k: spec.model_options[k] for k in MODEL_FIELDS}
        got_model = {k: tuple(v) if isinstance(v, list) else v for k, v in got_model.items()}
        assert got_model == {k: want[k] for k in MODEL_FIELDS}, trial.name
        assert spec.model == "unet"
        assert {k: getattr(spec.train, k) for k in TRAIN_FIELDS} == \
            {k: want[k] for k in TRAIN_FIELDS}, trial.name
        assert spec.train.weight_decay == 0.0  # Adam, weight decay 0 (App. E.2)
        ev = spec.eval
        assert (ev.dequant_draws, ev.tol, ev.fid_mode, ev.fid_samples) == \
            (want["dequant_draws"], 1e-5, "legacy_tensorflow", 50_000)


@pytest.mark.parametrize("name", ["ddpm", "score-matching", "scoreflow", "fm-diffusion"])
def test_diffusion_baselines_use_the_papers_vp_path(name):
    """App. E.1: beta_min 0.1, beta_max 20, time in [0, 1 - 1e-5] for training and likelihood."""
    constants = build_method(name).describe()
    assert constants["path"] == "VPPath"
    assert (constants["beta_min"], constants["beta_max"]) == (0.1, 20.0)
    assert constants["t_max"] == pytest.approx(1 - 1e-5)
