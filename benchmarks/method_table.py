"""Every registered method on 2-D datasets at an equal training budget: NFE, NLL, W2, MMD.

    python benchmarks/method_table.py [--datasets 8gaussians moons] [--steps 2000] [--seeds 0]
    python benchmarks/method_table.py --tiny    # fm-ot and fm-diffusion, 30 steps: a CI check
    python benchmarks/method_table.py --time-scale 1000   # the networks' time code on DDPM's scale
    python benchmarks/method_table.py --datasets digits --steps 400 --batch-size 128 --lr 5e-4 \
        --samples 200 --nll-samples 150 --fid-samples 256 --error-samples 32   # images

Prints one Markdown table (mean over seeds; NLL in nats and W2/MMD for 2-D data, bits/dim and FID
for images) and a one-line summary of the OT-vs-diffusion NFE claim.
Runs through the same trial runner as `fmbench trial`, so numbers match the CLI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from harness.core.evaluate import EvalConfig
from harness.core.methods import METHODS
from harness.core.train import TrainConfig
from harness.run.trial import TrialSpec, run_trial


COLUMNS = {"nfe": "NFE (dopri5) ↓", "nll": "NLL (nats) ↓", "bpd": "bits/dim ↓", "w2": "W2 ↓",
           "mmd": "MMD² ↓", "fid_classifier": "FID (classifier) ↓", "fid": "FID ↓",
           "nll_nfe": "NFE of NLL solve"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["8gaussians", "moons"])
    p.add_argument("--methods", nargs="+", default=METHODS.names())
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--nll-samples", type=int, default=1000)
    p.add_argument("--error-samples", type=int, default=EvalConfig.error_samples,
                   help="noise draws of the error-vs-NFE curve (not in the table; fewer is faster)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--fid-samples", type=int, default=0, help="images: samples for FID (0: none)")
    p.add_argument("--fid-features", default="classifier", choices=["classifier", "inception"],
                   help="images: feature space of FID (classifier: the digits' small classifier)")
    p.add_argument("--time-scale", type=float,
                   help="model option time_scale: t's multiplier in the time code (default: the "
                        "model's, 1; 1000 is the DDPM convention)")
    p.add_argument("--out", help="folder for trial files and results.json (default: a temp dir)")
    p.add_argument("--tiny", action="store_true",
                   help="two methods on 8gaussians, 30 steps, small evaluations (seconds)")
    args = p.parse_args()
    evaluation = EvalConfig(samples=args.samples, nll_samples=args.nll_samples,
                            error_samples=args.error_samples, trajectory_samples=0,
                            fid_samples=args.fid_samples, fid_features=args.fid_features)
    if args.tiny:
        args.datasets, args.methods, args.steps = ["8gaussians"], ["fm-ot", "fm-diffusion"], 30
        evaluation = EvalConfig(samples=100, nll_samples=50, error_samples=8, nfe_budgets=(4,),
                                tol=1e-3, reference_tol=1e-5, trajectory_samples=0)
    out = Path(args.out or tempfile.mkdtemp(prefix="fmbench-table-"))
    model_options = {} if args.time_scale is None else {"time_scale": args.time_scale}

    rows = []
    for dataset in args.datasets:
        for method in args.methods:
            per_seed = []
            for seed in args.seeds:
                spec = TrialSpec(method=method, dataset=dataset, seed=seed,
                                 model_options=model_options,
                                 train=TrainConfig(steps=args.steps, batch_size=args.batch_size,
                                                   lr=args.lr, warmup_steps=min(100, args.steps)),
                                 eval=evaluation)
                result = run_trial(spec, out / spec.name)
                per_seed.append(result.metrics)
                print(f"  {spec.name}: " + ", ".join(f"{k}={result.metrics[k]:.4g}"
                      for k in COLUMNS if k in result.metrics), flush=True)
            mean = {k: statistics.fmean(m[k] for m in per_seed) for k in per_seed[0]}
            rows.append({"dataset": dataset, "method": method, **mean})
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    # Read back from a trial's resolved config, so the line states what ran, default or not.
    print(f"\nmodel time_scale: {result.config['model_options'].get('time_scale')}")

    columns = [k for k in COLUMNS if any(k in r for r in rows)]
    print("\n| dataset | method | " + " | ".join(COLUMNS[k] for k in columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for r in rows:
        print(f"| {r['dataset']} | {r['method']} | "
              + " | ".join(f"{r[k]:.4g}" if k in r else "" for k in columns) + " |")
    for dataset in args.datasets:
        nfe = {r["method"]: r["nfe"] for r in rows if r["dataset"] == dataset}
        if "fm-ot" in nfe and "fm-diffusion" in nfe:
            verdict = "holds" if nfe["fm-ot"] < nfe["fm-diffusion"] else "does NOT hold"
            print(f"{dataset}: OT needs fewer NFE than the VP path: {verdict} "
                  f"({nfe['fm-ot']:.0f} vs {nfe['fm-diffusion']:.0f})")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()
