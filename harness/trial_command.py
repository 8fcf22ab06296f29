"""``fmbench trial``: one (method, dataset, seed) trained and evaluated here, without Ray or MLflow.

Every setting flag is generated from the field that declares it (TrialSpec, TrainConfig,
EvalConfig or a method option), so a default is written once and ``--help`` shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from functools import partial
from typing import TYPE_CHECKING, Any

from harness.errors import DataError

if TYPE_CHECKING:
    from harness.run.trial import TrialSpec


def whole_number(text: str) -> int:
    """An argparse type: an int >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive(kind):
    """An argparse type: a number of ``kind`` that must be > 0."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _declared_default(section: str, name: str, method: str = "") -> Any:
    """A setting's default where it is declared: a field of TrialSpec ("trial"), TrainConfig
    ("train") or EvalConfig ("eval"), or an option ("method") of ``method``'s registration."""
    if section == "method":
        from harness.core.methods import method_options

        return method_options(method)[name]
    from harness.core.evaluate import EvalConfig
    from harness.core.train import TrainConfig
    from harness.run.trial import TrialSpec

    owner = {"trial": TrialSpec, "train": TrainConfig, "eval": EvalConfig}[section]
    return next(f.default for f in fields(owner) if f.name == name)


def _shown(value: Any) -> str:
    """A default as one would type it on the command line."""
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
    """Ends each setting's help with its default, looked up only when help is printed: the
    configs import torch, which parsing every other command must not wait for."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        lookup = getattr(action, "default_from", None)
        return text if lookup is None else f"{text} ({_shown(lookup())})".replace("%", "%%")


def _setting(parser: argparse.ArgumentParser, section: str, name: str, text: str,
             default_of: str = "", **kwargs: Any) -> None:
    """``--name`` for one setting of ``section`` (see :func:`_declared_default`). Left out, it
    stays out of the parsed arguments (:func:`_given`), so the declared default applies and is
    written nowhere else."""
    action = parser.add_argument("--" + name.replace("_", "-"), dest=f"{section}.{name}",
                                 default=argparse.SUPPRESS, help=text,
                                 metavar=None if "choices" in kwargs else name.upper(), **kwargs)
    action.default_from = partial(_declared_default, section, name, default_of)


def _given(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The settings of ``section`` given on the command line (lists as tuples, like the configs)."""
    prefix = section + "."
    return {k[len(prefix):]: tuple(v) if isinstance(v, list) else v
            for k, v in vars(args).items() if k.startswith(prefix)}


def add_trial_parser(sub, epilog: str) -> None:
    """``fmbench trial``: one setting per flag, each default read where it is declared."""
    p = sub.add_parser("trial", help="train and evaluate one (method, dataset, seed)",
                       epilog=epilog, formatter_class=HelpWithDefaults)
    p.add_argument("--method", required=True, help="a method name (fmbench list)")
    p.add_argument("--dataset", required=True, help="a dataset name (fmbench list)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import this module or .py file first (it registers components); "
                        "repeatable")
    _setting(p, "trial", "seed", "seeds data, init, noise", type=int)
    _setting(p, "train", "steps", "optimizer steps", type=positive(int))
    _setting(p, "train", "batch_size", "batch size", type=positive(int))
    _setting(p, "train", "lr", "peak learning rate", type=positive(float))
    _setting(p, "method", "sigma_min", "sigma_min of fm-ot / ot-cfm", type=float,
             default_of="fm-ot")
    _setting(p, "eval", "tol", "dopri5 atol = rtol for NFE and NLL", type=positive(float))
    _setting(p, "eval", "samples", "dopri5 samples for NFE and W2/MMD", type=positive(int))
    _setting(p, "eval", "nll_samples", "held-out examples for NLL", type=positive(int))
    _setting(p, "eval", "dequant_draws", "uniform dequantization draws K for bits/dim",
             type=positive(int))
    _setting(p, "eval", "error_samples", "noise draws for numerical error vs NFE",
             type=positive(int))
    _setting(p, "eval", "nfe_budgets", "NFE budgets of the fixed-step solvers",
             type=positive(int), nargs="+")
    _setting(p, "eval", "fid_samples", "generated samples for FID of image data, 0 for none",
             type=int)
    _setting(p, "eval", "fid_features", "Inception (fid) or a small digit classifier "
             "(fid_classifier)", choices=("inception", "classifier"))
    _setting(p, "eval", "fid_nfe_samples", "samples per point of FID vs NFE, 0 for no curve",
             type=int)
    _setting(p, "eval", "quality_nfe_samples", "samples per point of W2/MMD vs NFE (2-D data), "
             "0 for no curve", type=int)
    _setting(p, "eval", "curve_tols", "dopri5 tolerances of the quality-vs-NFE curves (none: "
             "--tol alone)", type=positive(float), nargs="+")
    _setting(p, "train", "precision", "bf16 autocasts the forward pass", choices=("fp32", "bf16"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    p.add_argument("--data-root", help="folder with dataset files ($FMBENCH_DATA)")
    p.add_argument("--no-download", action="store_true", help="never download datasets")
    p.add_argument("--out", default="trials", help="parent folder for the trial's files (trials)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")

def _trial_spec(args) -> TrialSpec:
    """The trial the flags describe, its names and method options checked before any data is
    loaded or any step trained."""
    from pathlib import Path

    from harness.datasets import DATASETS
    from harness.core.evaluate import EvalConfig
    from harness.core.methods import METHODS, build_method
    from harness.core.train import TrainConfig
    from harness.plugins import load_plugins, plugins_of
    from harness.run.trial import TrialSpec

    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise DataError(f"data root {args.data_root} does not exist or is not a folder")
    load_plugins(args.plugin, "fmbench trial --plugin")
    options = _given(args, "method")
    spec = TrialSpec(method=args.method, dataset=args.dataset, method_options=options,
                     data_root=args.data_root, download=not args.no_download,
                     train=TrainConfig(**_given(args, "train")),
                     eval=EvalConfig(**_given(args, "eval")), **_given(args, "trial"),
                     plugins=plugins_of(METHODS.entry(args.method), DATASETS.entry(args.dataset)))
    if options:
        build_method(spec.method, **options)
    return spec


class _ProgressBar:
    """Training progress on stderr; the bar appears at the first step, so an error before
    training prints none."""

    def __init__(self, total: int, title: str) -> None:
        self.total, self.title, self.bar = total, title, None

    def __call__(self, step: int, loss: float) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.title, file=sys.stderr, unit="step",
                            dynamic_ncols=True, mininterval=0.5)
        self.bar.n = step
        if step % 50 == 0 or step == self.total:
            self.bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _print_trial(result, spec, device, as_json: bool) -> None:
    """A finished trial: its record (JSON) or a short table on stdout, its warnings on stderr."""
    if as_json:
        payload = result.to_json()
        payload.pop("losses")
        print(json.dumps(payload, default=str))
    else:
        print(f"{spec.name}: {result.training.step} steps on {device}, files in {result.out_dir}")
        for name, value in result.metrics.items():
            print(f"  {name:<12} {value:.6g}")
        for p in result.evaluation.error_curve:
            print(f"  error {p.solver:<8} NFE {p.nfe:<4} {p.error:.3e}")
        for p in result.evaluation.quality_curve:
            where = p.solver if p.tol is None else f"{p.solver} tol {p.tol:g}"
            shown = " ".join(f"{k} {v:.4g}" for k, v in p.values.items())
            print(f"  {where:<18} NFE {p.nfe:<6.1f} {shown}")
    for warning in result.evaluation.warnings:
        print(f"fmbench: warning: {warning}", file=sys.stderr)


def cmd_trial(args) -> int:
    from pathlib import Path

    from harness.core.device import resolve_device
    from harness.run.trial import run_trial

    spec = _trial_spec(args)
    device = resolve_device(args.device)
    progress = _ProgressBar(spec.train.steps, f"train {spec.name}")
    try:
        result = run_trial(spec, Path(args.out) / spec.name, device=device, progress=progress,
                           announce=lambda message: print(message, file=sys.stderr))
    finally:
        progress.close()
    _print_trial(result, spec, device, args.json)
    return 0
