"""GPU readiness: the accelerator settings, fractional-GPU packing and Inception FID, in one run.

    python benchmarks/gpu_check.py            # on a CUDA machine: a few minutes
    python benchmarks/gpu_check.py --tiny     # CPU form, under a minute: what CI runs

Three checks, one table:
  unet step      fmbench's U-Net training step (harness.core.train.train) with each speed setting of
                 TrainConfig (precision bf16, compile, channels_last, pin_memory, fused_adam), one
                 at a time and all together, against fp32 eager on the same model, data and batch.
                 Repetitions alternate (A, B, ..., then reversed) and each is one train() call;
                 its first steps (compilation, allocator growth) are untimed, then the mean step
                 time over the timed steps, with a CUDA sync at both ends. Medians over
                 repetitions; the speed-up is the median of per-repetition ratios (baseline / setting).
  fractional     4 small 2-D trials run by fmbench's scheduler (run_suite) on a local Ray node with
  GPUs           one GPU: once at 1 GPU per task (one trial at a time), once at 0.25 GPU (packed),
                 after a warm-up run that starts Ray's workers. Wall-time ratio, and the most trials
                 seen training at once (from the end time and duration each trial logs).
  digits trial   one fm-ot trial on digits, trained and evaluated end to end with Inception FID.

CPU form (``--tiny``, or no CUDA): settings that only act on CUDA still run and say so (pin_memory
is a no-op off CUDA); ``compile`` is left out of ``--tiny`` (inductor builds C++ kernels for
minutes on a small CPU); Ray is given a fake GPU (``num_gpus=1`` on a CPU node, as the tests do);
and the digits trial uses the classifier FID (Inception at 299x299 on a CPU takes minutes).
When the Inception weights are missing and cannot be fetched (an offline machine) the table says
so and gives the classifier FID instead. Times on a CPU are CPU seconds of this process, with one
torch thread (the machine is shared, see train_overhead.py); on CUDA, wall seconds.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # runnable as `python benchmarks/gpu_check.py` from a checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness.datasets.base import Dataset  # noqa: E402
from harness.core.methods import build_method  # noqa: E402
from harness.models import build_model  # noqa: E402
from harness.core.train import TrainConfig, train  # noqa: E402

SETTINGS: dict[str, dict[str, object]] = {
    "fp32 eager": {},
    "bf16": {"precision": "bf16"},
    "compile": {"compile": True},
    "channels_last": {"channels_last": True},
    "pin_memory": {"pin_memory": True},
    "fused_adam": {"fused_adam": True},
    "all": {"precision": "bf16", "compile": True, "channels_last": True, "pin_memory": True,
            "fused_adam": True},
}
BASELINE = "fp32 eager"
PACKED_GPUS = 0.25
PACK_TRIALS = 4

PACK_SUITE = """\
name: {name}
methods: [fm-ot]
datasets: [8gaussians]
seeds: [0, 1, 2, 3]
model: {{vector: {{name: mlp, hidden: 64, depth: 2}}}}
training: {{steps: {steps}, batch_size: 256, warmup_steps: 10, checkpoint_every: 0, log_every: 10}}
evaluation: {{samples: 100, nll_samples: 20, error_samples: 8, nfe_budgets: [4], solvers: [euler],
             batch_size: 100, trajectory_samples: 0, tol: 1e-3, reference_tol: 1e-5}}
resources: {{train: {{cpus: 1, gpus: {gpus}}}, eval: {{cpus: 1, gpus: {gpus}}}}}
storage: {{checkpoints: {storage}}}
tracking: {{experiment: {name}}}
"""


@dataclass
class Row:
    """One line of the table: ``value`` is what was measured (or "n/a"), ``ratio`` the speed-up
    against the check's baseline (empty where there is none)."""

    check: str
    setting: str
    value: str
    ratio: str = ""
    note: str = ""


@dataclass(frozen=True)
class Sizes:
    """Everything the three checks scale with, for the GPU form and the CPU (``--tiny``) form."""

    image_shape: tuple[int, int, int]
    unet: dict
    batch: int
    warmup_steps: int
    timed_steps: int
    reps: int
    pack_steps: int
    digits_steps: int
    digits_batch: int
    digits_eval: dict
    digits_model: dict


GPU_SIZES = Sizes(
    image_shape=(3, 32, 32),  # CIFAR-10's shape, random pixels: a step's cost ignores content
    unet={"channels": 64, "channel_mult": (1, 2, 2), "num_res_blocks": 2,
          "attention_resolutions": (16,)},
    batch=128, warmup_steps=10, timed_steps=30, reps=5, pack_steps=1000,
    digits_steps=2000, digits_batch=128,
    digits_eval={"samples": 500, "nll_samples": 200, "divergence": "hutchinson",
                 "error_samples": 32, "nfe_budgets": (4, 8, 16), "fid_samples": 2000},
    digits_model={},  # fmbench's U-Net preset
)
TINY_SIZES = Sizes(
    image_shape=(1, 8, 8),
    unet={"channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
          "attention_resolutions": (4,), "groups": 4},
    batch=16, warmup_steps=2, timed_steps=3, reps=3, pack_steps=100,
    digits_steps=20, digits_batch=32,
    digits_eval={"samples": 16, "nll_samples": 8, "divergence": "hutchinson", "error_samples": 4,
                 "solvers": ("euler",), "nfe_budgets": (4,), "fid_samples": 64, "batch_size": 64,
                 "trajectory_samples": 0, "tol": 1e-3, "reference_tol": 1e-4},
    digits_model={"channels": 8, "channel_mult": (1, 2), "num_res_blocks": 1,
                  "attention_resolutions": (), "groups": 4},
)


# -- 1. the U-Net training step under each accelerator setting ------------------------------------

def random_images(shape: tuple[int, int, int], n: int = 2048) -> Dataset:
    """8-bit images of ``shape`` with random pixels: the cost of a step does not depend on them."""
    gen = torch.Generator().manual_seed(0)
    return Dataset(f"random{'x'.join(map(str, shape))}",
                   torch.randint(0, 256, (n, *shape), generator=gen, dtype=torch.uint8),
                   torch.randint(0, 256, (64, *shape), generator=gen, dtype=torch.uint8), 256)


def step_seconds(data: Dataset, init: torch.nn.Module, cfg: TrainConfig, device: torch.device,
                 warmup: int, timed: int) -> float:
    """Seconds per optimizer step over steps warmup+1 .. warmup+timed of one ``train`` call.
    The progress hook runs after each step; on CUDA it syncs first, so queued kernels count."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    marks: dict[int, float] = {}
    ends = (warmup, warmup + timed)

    def progress(step: int, _loss: float) -> None:
        if step in ends:
            if cuda:
                torch.cuda.synchronize(device)
            marks[step] = clock()

    if cfg.compile:  # each call compiles afresh: never past dynamo's recompile limit into eager
        torch._dynamo.reset()
    train(build_method("fm-ot"), data, copy.deepcopy(init),
          replace(cfg, steps=warmup + timed), device=device, progress=progress)
    return (marks[ends[1]] - marks[ends[0]]) / timed


def unet_rows(sizes: Sizes, device: torch.device, tiny: bool) -> list[Row]:
    """The accelerator settings side by side against fp32 eager (alternating repetitions)."""
    cuda = device.type == "cuda"
    data = random_images(sizes.image_shape)
    torch.manual_seed(0)
    init = build_model("unet", data.shape, **sizes.unet)
    cfg = TrainConfig(batch_size=sizes.batch, warmup_steps=5, checkpoint_every=0, log_every=10)
    skipped: dict[str, str] = {}
    settings = dict(SETTINGS)
    if tiny and not cuda:
        skipped["compile"] = "n/a in --tiny on CPU: inductor builds C++ kernels for minutes"
        settings["all"] = {k: v for k, v in settings["all"].items() if k != "compile"}
        del settings["compile"]
    names = list(settings)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(sizes.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            times[name].append(step_seconds(data, init, replace(cfg, **settings[name]), device,
                                            sizes.warmup_steps, sizes.timed_steps))
    params = sum(p.numel() for p in init.parameters())
    where = "CUDA wall" if cuda else "CPU"
    rows = []
    for name in SETTINGS:
        if name in skipped:
            rows.append(Row("unet step", name, "n/a", "n/a", skipped[name]))
            continue
        ratio = statistics.median(b / s for b, s in zip(times[BASELINE], times[name]))
        note = f"{params:,} params, {sizes.image_shape}, batch {sizes.batch}, {where} time"
        if name == "pin_memory" and not cuda:
            note = "no-op off CUDA (batches are pinned only for CUDA copies)"
        elif name == "bf16" and not cuda:
            note = "CPU autocast"
        elif name == "all" and "compile" in skipped:
            note = "every setting but compile"
        rows.append(Row("unet step", name, f"{statistics.median(times[name]) * 1e3:.2f} ms/step",
                        f"{ratio:.2f}x", note))
    return rows


# -- 2. fractional GPUs pack --------------------------------------------------------------------

def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals (start, end) open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # an end before a start at the same instant
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


def training_intervals(uri: str, experiment: str) -> list[tuple[float, float]]:
    """(start, end) of each trial's training in seconds since the epoch: ``time/train_s`` is
    logged as training ends, with the training time as its value."""
    from mlflow import MlflowClient

    from harness.run import record

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], record.kind_filter(record.TRIAL))
    out = []
    for run in runs:
        (m,) = client.get_metric_history(run.info.run_id, record.TRAIN_S)[-1:]
        out.append((m.timestamp / 1e3 - m.value, m.timestamp / 1e3))
    return out


def start_ray(folder: Path) -> None:
    """A private one-node Ray with 1 GPU (a real one on CUDA, a fake one otherwise) and a CPU per
    packed trial, on 127.0.0.1, its files under ``folder`` (never joining another cluster)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ["RAY_TMPDIR"] = str(folder)
    os.environ.pop("RAY_ADDRESS", None)
    import ray

    ray.init(num_cpus=PACK_TRIALS, num_gpus=1, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False, _node_ip_address="127.0.0.1", _temp_dir=str(folder))


def pack_rows(sizes: Sizes, folder: Path) -> list[Row]:
    """4 trials at 1 GPU each against the same trials at 0.25 GPU each, on one (real or fake) GPU."""
    import ray

    from harness.run.scheduler import run_suite
    from harness.run.suite import load_suite

    uri = f"sqlite:///{folder / 'mlflow.db'}"

    def run(name: str, gpus: float, steps: int) -> float:
        path = folder / f"{name}.yaml"
        path.write_text(PACK_SUITE.format(name=name, steps=steps, gpus=gpus,
                                          storage=folder / "ckpt"))
        started = time.perf_counter()
        summary = run_suite(load_suite(path), tracking_uri=uri, stream=io.StringIO())
        seconds = time.perf_counter() - started
        if summary.count("finished") != PACK_TRIALS:
            bad = [f"{s.trial.name}: {s.status} {s.reason}" for s in summary.states]
            raise RuntimeError("packing trials did not all finish: " + "; ".join(bad))
        return seconds

    start_ray(folder / "ray")
    try:
        run("gpu-check-warmup", PACKED_GPUS, 2)  # starts the workers both timed runs reuse
        alone = run("gpu-check-alone", 1, sizes.pack_steps)
        packed = run("gpu-check-packed", PACKED_GPUS, sizes.pack_steps)
    finally:
        ray.shutdown()
    most_alone = max_overlap(training_intervals(uri, "gpu-check-alone"))
    most_packed = max_overlap(training_intervals(uri, "gpu-check-packed"))
    gpu = "1 GPU" if torch.cuda.is_available() else "1 fake GPU (Ray num_gpus on a CPU node)"
    note = f"{PACK_TRIALS} fm-ot 8gaussians trials, {sizes.pack_steps} steps, {gpu}"
    return [Row("fractional GPUs", "1 GPU per trial", f"{alone:.1f} s wall", "1.00x",
                f"{note}; at most {most_alone} training at once"),
            Row("fractional GPUs", f"{PACKED_GPUS} GPU per trial", f"{packed:.1f} s wall",
                f"{alone / packed:.2f}x", f"at most {most_packed} training at once")]


# -- 3. one digits trial end to end ---------------------------------------------------------------

def digits_rows(sizes: Sizes, device: torch.device, features: str, folder: Path) -> list[Row]:
    """Train and evaluate one digits trial with FID on ``features``; when Inception is unavailable
    (no weights, no network) say why and give the classifier FID of the same trained network."""
    from harness.core.evaluate import EvalConfig, evaluate_during_training
    from harness.run.trial import TrialSpec, load_trained, prepare, run_trial

    ecfg = EvalConfig(fid_features=features, **sizes.digits_eval)
    spec = TrialSpec(method="fm-ot", dataset="digits", download=False,
                     model_options=sizes.digits_model,
                     train=TrainConfig(steps=sizes.digits_steps, batch_size=sizes.digits_batch,
                                       lr=5e-4, warmup_steps=min(100, sizes.digits_steps),
                                       checkpoint_every=0, log_every=10),
                     eval=ecfg)
    started = time.perf_counter()
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # bounds clean-fid's download of the Inception weights
    try:
        result = run_trial(spec, folder / "digits", device=device)
    finally:
        socket.setdefaulttimeout(previous)
    total = time.perf_counter() - started
    m = result.metrics
    timing = (f"train {m['train_time']:.1f} s, eval {m['eval_time']:.1f} s, bpd {m['bpd']:.2f}, "
              f"NFE {m['nfe']:.0f}")
    if features == "classifier":
        return [Row("digits trial", "Inception FID", "n/a", "",
                    "CPU form: Inception at 299x299 takes minutes on a CPU; classifier FID below"),
                Row("digits trial", "classifier FID", f"{m['fid_classifier']:.2f}", "",
                    f"{timing}; {total:.1f} s end to end")]
    if "fid" in m:
        return [Row("digits trial", "Inception FID", f"{m['fid']:.2f}", "",
                    f"{timing}; {total:.1f} s end to end")]
    reason = (result.evaluation.warnings or ["no FID was computed"])[0]
    prep = prepare(replace(spec, eval=replace(ecfg, fid_features="classifier")))
    net = load_trained(prep, folder / "digits", device)
    # Only the FID part of an evaluation (what training-time evaluations compute).
    fallback = evaluate_during_training(prep.method, net, prep.dataset, prep.spec.eval, device)
    return [Row("digits trial", "Inception FID", "unavailable", "", reason[:240]),
            Row("digits trial", "classifier FID", f"{fallback['fid_classifier']:.2f}", "",
                f"instead of Inception; {timing}")]


# -- table --------------------------------------------------------------------------------------

def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    out("| check | setting | measured | vs baseline | note |")
    out("|---|---|---|---|---|")
    for r in rows:
        out(f"| {r.check} | {r.setting} | {r.value} | {r.ratio} | {r.note} |")


def summary(rows: list[Row], device: torch.device) -> str:
    by = {(r.check, r.setting): r for r in rows}
    where = (f"CUDA ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else "CPU form, no CUDA")
    unet = [r for r in rows if r.check == "unet step" and r.ratio not in ("", "n/a")
            and r.setting not in (BASELINE, "all")]
    best = max(unet, key=lambda r: float(r.ratio.rstrip("x")))
    packed = by[("fractional GPUs", f"{PACKED_GPUS} GPU per trial")]
    fid = next(r for r in rows if r.check == "digits trial" and r.value not in ("n/a", "unavailable"))
    return (f"SUMMARY gpu_check: {where}; all settings {by[('unet step', 'all')].ratio} vs fp32 "
            f"eager (best alone: {best.setting} {best.ratio}); {PACK_TRIALS} trials at "
            f"{PACKED_GPUS} GPU {packed.ratio} faster than one at a time ({packed.note}); digits "
            f"{fid.setting} {fid.value}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="the CPU form: small sizes, under a minute")
    p.add_argument("--reps", type=int, help="repetitions of each accelerator setting")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    args = p.parse_args()
    from harness.core.device import resolve_device

    device = resolve_device(args.device)
    sizes = TINY_SIZES if args.tiny else GPU_SIZES
    if args.reps:
        sizes = replace(sizes, reps=args.reps)
    if device.type == "cpu":
        torch.set_num_threads(1)  # CPU time of one thread: the machine is shared
    features = "classifier" if args.tiny or device.type == "cpu" else "inception"
    print(f"gpu_check on {device}" + (f" ({torch.cuda.get_device_name(device)}, torch "
                                      f"{torch.__version__})" if device.type == "cuda" else
                                      f", torch {torch.__version__}; CPU form"))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp)
        rows: list[Row] = []
        for name, check in (("unet step", lambda: unet_rows(sizes, device, args.tiny)),
                            ("fractional GPUs", lambda: pack_rows(sizes, folder)),
                            ("digits trial", lambda: digits_rows(sizes, device, features, folder))):
            started = time.perf_counter()
            rows += check()
            print(f"{name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    print_table(rows)
    print(summary(rows, device))


if __name__ == "__main__":
    main()
