"""The training loop: AdamW with warmup, EMA, gradient clipping, bf16 autocast, resumable.

All randomness of a run (batch indices, dequantization, noise, times) comes from one CPU generator
seeded by ``TrainConfig.seed``, whose state is checkpointed with the weights, the optimizer and the
EMA. Resuming from step k therefore continues the same run: it ends with the same parameters as a
run that was never stopped.

Data-parallel training (:class:`Parallel`) keeps that property: every rank draws the same global
batch from the same generator and trains a DDP-wrapped network on its own block of rows; DDP
averages the gradients, so each update equals the one-process update on the whole batch up to the
order of float additions.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from harness.core import storage
from harness.core.checkpoint import load_checkpoint, save_checkpoint
from harness.datasets import Dataset
from harness.errors import CheckpointError, ConfigError, DivergenceError
from harness.core.methods import Method

CHECKPOINT_NAME = "checkpoint.pt"

EvalHook = Callable[[int, nn.Module], "dict[str, float] | None"]
"""Called every ``eval_every`` steps with (step, EMA network in eval mode); must not touch the
global RNG or the network's weights (evaluations seed their own generators). The metrics it
returns are kept in the checkpoint (:attr:`TrainResult.during`), so a run that resumes a finished
or later checkpoint, in another tracking store too, still gets the whole during-training curve."""

Progress = Callable[[int, float], None]
"""Called after every optimizer step with (step, latest logged mean loss or NaN before the first)."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings; every field is recorded with the run.

    steps: optimizer steps in total (a resumed run continues up to this number).
    batch_size: examples per step (the global batch).
    lr: peak AdamW learning rate, reached after ``warmup_steps`` of linear warmup.
    lr_schedule: after warmup, "constant", or "linear-decay" to 0 at ``steps`` (polynomial decay of
        power 1, the Flow Matching paper's CIFAR-10 / ImageNet-32 schedule).
    weight_decay: AdamW decoupled weight decay.
    ema_decay: EMA of the weights used for evaluation; the effective decay ramps up as
        min(ema_decay, (1 + step) / (10 + step)) so early averages are not dominated by init.
    grad_clip: max global gradient norm; 0 turns clipping off.
    checkpoint_every: steps between checkpoints; 0 writes only the final one.
    log_every: steps between recorded (mean) losses; also how often the loss is checked for NaN/inf.
    eval_every: steps between evaluations of the EMA weights during training (0: none); the
        evaluation itself is the caller's ``on_eval`` hook.
    precision: "fp32", or "bf16" for autocast of the forward pass (weights stay fp32).

    Speed-only settings (``SPEED_ONLY``): they change how fast a step runs, and results only at the
    level of float rounding, so they are left out of the trial key and the resume check (toggling
    one neither reruns finished trials nor refuses a checkpoint).
    compile: train through ``torch.compile(net)`` (inductor; fuses the small ops of a step, and on
        CPU needs a C compiler). Checkpoints and results hold the plain module.
    channels_last: channels-last memory format for image models and batches (faster convolutions on
        tensor cores); a no-op for vector data, which has no channel dimension.
    pin_memory: copy each batch through pinned host memory and move it to CUDA with
        ``non_blocking``, so the copy overlaps compute; a no-op on CPU (see :func:`pins_batches`).
    fused_adam: ``AdamW(fused=True)``: one kernel updates every parameter instead of a loop of
        small ones.
    """

    SPEED_ONLY: ClassVar[tuple[str, ...]] = ("compile", "channels_last", "pin_memory", "fused_adam")

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    lr_schedule: str = "constant"
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    eval_every: int = 0
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    pin_memory: bool = False
    fused_adam: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"training {name} must be > 0, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "eval_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training {name} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"training lr must be a positive number, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_schedule not in ("constant", "linear-decay"):
            raise ConfigError(f"unknown lr_schedule {self.lr_schedule!r}; valid: constant, "
                              "linear-decay")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"unknown precision {self.precision!r}; valid: fp32, bf16")
        for name in self.SPEED_ONLY:
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"training {name} must be true or false, got "
                                  f"{getattr(self, name)!r}")

    def resume_key(self) -> dict:
        """Settings a checkpoint must share to be resumed (``steps`` may grow under a constant
        schedule; how often the run checkpoints, logs or evaluates changes no parameter, and the
        speed-only settings change them by rounding at most)."""
        skip = {"checkpoint_every", "log_every", "eval_every", *self.SPEED_ONLY}
        if self.lr_schedule == "constant":
            skip.add("steps")
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def lr_factor(self, step: int) -> float:
        """Multiplier of ``lr`` for the optimizer step that follows ``step`` completed steps."""
        warmup = max(self.warmup_steps, 1)
        if step < warmup:
            return (step + 1) / warmup
        if self.lr_schedule == "linear-decay":
            return max(0.0, 1.0 - (step - warmup) / max(self.steps - warmup, 1))
        return 1.0


@dataclass(frozen=True)
class Parallel:
    """This process's place in data-parallel training: ``rank`` of ``world_size`` processes in an
    already initialised ``torch.distributed`` process group (Ray Train sets it up; gloo on CPU,
    NCCL on GPUs). The default is one process and no process group."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank must be in [0, {self.world_size}), got {self.rank}")

    @property
    def main(self) -> bool:
        """Rank 0 alone writes checkpoints and reports progress and evaluations."""
        return self.rank == 0

    def block(self, batch_size: int) -> slice:
        """This rank's contiguous rows of a global batch of ``batch_size`` examples."""
        if batch_size % self.world_size:
            raise ConfigError(f"training batch_size {batch_size} must be divisible by the "
                              f"{self.world_size} training workers (it is the global batch, "
                              "split evenly between them)")
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)


SINGLE = Parallel()


@dataclass
class TrainResult:
    """net: trained weights; ema: EMA weights (evaluate these); losses: (step, mean loss) pairs."""

    net: nn.Module
    ema: nn.Module
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: int = 0
    earlier_seconds: float = 0.0  # training time of earlier attempts, from the checkpoint
    during: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    """(step, metrics) of every during-training evaluation, earlier attempts' included."""


def pins_batches(device: torch.device, pin_memory: bool) -> bool:
    """Whether batches go through pinned host memory: only when asked and bound for CUDA (pinning
    helps host-to-GPU copies only; on CPU it would be a wasted copy)."""
    return pin_memory and device.type == "cuda"


def _choose_adam_kernel(opt: torch.optim.Optimizer, fused: bool) -> None:
    """AdamW's implementation, which changes speed only: ``fused`` (one kernel), else ``foreach``
    (bitwise equal to torch's per-tensor loop, which it picks by default on CPU, and ~10% faster
    there). Steps counters move to where that implementation wants them (fused: the parameter's
    device), so a checkpoint written with the other choice resumes."""
    for group in opt.param_groups:
        group["fused"], group["foreach"] = (True, None) if fused else (None, True)
    for param, state in opt.state.items():
        if "step" in state:
            state["step"] = state["step"].to(param.device if fused else "cpu", torch.float32)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast, or nothing (a disabled autocast still costs a few microseconds per step)."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _check_same_step(step: int, device: torch.device, path: Path | None) -> None:
    """Refuse to train when ranks resumed from different steps (a shared folder that showed some
    nodes a stale checkpoint): their batches would no longer be parts of one global batch."""
    seen = torch.tensor([step, -step], dtype=torch.int64, device=device)
    torch.distributed.all_reduce(seen, op=torch.distributed.ReduceOp.MAX)
    if int(seen[0]) != -int(seen[1]):
        raise CheckpointError(f"training workers resumed from different steps ({-int(seen[1])} to "
                              f"{int(seen[0])}) of {path}; every node must see the same folder")


@dataclass
class _Run:
    """Everything a checkpoint holds: restoring it continues the same run (weights, EMA, optimizer,
    schedule, the run's generator and torch's global RNG, losses, and the time spent so far)."""

    net: nn.Module
    ema: nn.Module
    opt: torch.optim.AdamW
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    during: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    earlier_seconds: float = 0.0

    @classmethod
    def start(cls, net: nn.Module, cfg: TrainConfig, device: torch.device) -> _Run:
        """A fresh run of ``net`` on ``device``."""
        # A compiled module's state dict prefixes every key with "_orig_mod."; keep the plain one
        # so checkpoints load into an uncompiled network (resume, evaluation) whatever
        # cfg.compile says.
        net = getattr(net, "_orig_mod", net).to(device)
        if cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)  # converts 4-D weights only
        ema = copy.deepcopy(net).requires_grad_(False)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor)
        return cls(net, ema, opt, sched, torch.Generator().manual_seed(cfg.seed))

    def resume(self, path: Path, cfg: TrainConfig, device: torch.device) -> None:
        """Restore the checkpoint at ``path``, refused if written with other training settings."""
        state = load_checkpoint(path, map_location=device)
        if state.get("train_config") != cfg.resume_key():
            raise CheckpointError(f"checkpoint {path} was written with different training "
                                  "settings; use another folder or delete it")
        try:
            self.net.load_state_dict(state["net"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.gen.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match this model ({exc})"[:300])
        self.step, self.losses = int(state["step"]), [tuple(x) for x in state["losses"]]
        self.earlier_seconds = float(state.get("seconds", 0.0))  # absent in older checkpoints
        self.during = [(int(step), dict(m)) for step, m in state.get("during", [])]  # likewise

    def save(self, path: Path, cfg: TrainConfig, started: float) -> None:
        """Checkpoint the run; ``started``: perf_counter() when this attempt began training."""
        save_checkpoint(path, {
            "step": self.step, "net": self.net.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
            "losses": [list(x) for x in self.losses], "train_config": cfg.resume_key(),
            "during": [[step, metrics] for step, metrics in self.during],
            "seconds": self.earlier_seconds + time.perf_counter() - started})


def _ema_updater(net: nn.Module, ema: nn.Module) -> Callable[[float], None]:
    """``update(decay)``: moves ``ema``'s weights towards ``net``'s and copies its buffers.

    The parameter and buffer lists are built once: walking the module tree every step costs ~6% of
    a small MLP's step on CPU (profiled with cProfile, benchmarks/train_overhead.py).
    """
    ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
    ema_buffers, net_buffers = list(ema.buffers()), list(net.buffers())

    @torch.no_grad()
    def update(decay: float) -> None:
        torch._foreach_lerp_(ema_params, net_params, 1.0 - decay)
        for b_ema, b in zip(ema_buffers, net_buffers):
            b_ema.copy_(b)

    return update


def _batch_loader(dataset: Dataset, cfg: TrainConfig, device: torch.device,
                  gen: torch.Generator) -> Callable[[], torch.Tensor]:
    """``next_batch()``: the run's next global batch in model space on ``device``, its indices and
    dequantization drawn from ``gen``."""
    pin = pins_batches(device, cfg.pin_memory)
    image_layout = torch.channels_last if cfg.channels_last and len(dataset.shape) == 3 else None

    def next_batch() -> torch.Tensor:
        idx = torch.randint(len(dataset.train), (cfg.batch_size,), generator=gen)
        x1 = dataset.to_model_space(dataset.train[idx], gen)
        x1 = x1.pin_memory().to(device, non_blocking=True) if pin else x1.to(device)
        if image_layout is not None:
            x1 = x1.contiguous(memory_format=image_layout)
        return x1

    return next_batch


def _forward_module(net: nn.Module, cfg: TrainConfig, device: torch.device,
                    distributed: bool) -> nn.Module:
    """What the loss calls: ``net``, DDP-wrapped for data-parallel training, compiled if asked."""
    forward = net
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        # Built after loading the checkpoint; DDP broadcasts rank 0's weights to the others.
        on_gpu = [device] if device.type == "cuda" else None
        forward = DistributedDataParallel(net, device_ids=on_gpu)
    return torch.compile(forward) if cfg.compile else forward


def _logged_loss(window: torch.Tensor, step: int, n: int, parallel: Parallel) -> float:
    """Mean loss of the ``n`` steps up to ``step`` summed in ``window`` (then zeroed), over every
    rank; one host sync per log interval keeps the GPU queue full between them. NaN/inf raises."""
    if parallel.world_size > 1:  # every rank records (and checks) the mean over the global batch
        torch.distributed.all_reduce(window)
        window.div_(parallel.world_size)
    mean = float(window) / n
    window.zero_()
    if not math.isfinite(mean):
        raise DivergenceError(f"training loss became {mean} between steps "
                              f"{step - n + 1} and {step}; last good checkpoint kept")
    return mean


def _evaluate_ema(on_eval: EvalHook, step: int, ema: nn.Module) -> dict[str, float] | None:
    """Call ``on_eval`` with the EMA network in eval mode; an evaluation never shifts training's
    RNG."""
    ema.eval()
    with torch.random.fork_rng(devices=[]):
        metrics = on_eval(step, ema)
    ema.train()
    return metrics


def train(method: Method, dataset: Dataset, net: nn.Module, cfg: TrainConfig, *,
          device: torch.device | str = "cpu", checkpoint_dir: str | Path | None = None,
          progress: Progress | None = None, on_eval: EvalHook | None = None,
          stop_after: int | None = None, parallel: Parallel = SINGLE) -> TrainResult:
    """Train ``net`` with ``method``'s loss on ``dataset``; resume from ``checkpoint_dir`` if it
    holds a checkpoint. ``stop_after`` ends the call early at that step (after checkpointing),
    as an interruption would.

    With ``parallel.world_size`` > 1 every rank must call this with the same arguments (and see
    the same ``checkpoint_dir``); only rank 0 writes checkpoints and calls ``progress`` and
    ``on_eval``, and the losses returned are means over all ranks.
    """
    device = torch.device(device)
    distributed = parallel.world_size > 1
    block = parallel.block(cfg.batch_size) if distributed else None
    run = _Run.start(net, cfg, device)
    ckpt_path = storage.join(checkpoint_dir, CHECKPOINT_NAME) if checkpoint_dir else None
    if ckpt_path is not None and storage.exists(ckpt_path):
        run.resume(ckpt_path, cfg, device)
    if distributed:  # every rank, with or without a checkpoint: this is a collective
        _check_same_step(run.step, device, ckpt_path)
    resumed_from = run.step
    # after loading: a checkpoint's parameter groups carry their own choice
    _choose_adam_kernel(run.opt, cfg.fused_adam)
    params = list(run.net.parameters())
    update_ema = _ema_updater(run.net, run.ema)
    forward = _forward_module(run.net, cfg, device, distributed)
    next_batch = _batch_loader(dataset, cfg, device, run.gen)
    run.net.train()
    started = time.perf_counter()
    window = torch.zeros((), device=device)
    while run.step < cfg.steps:
        x1 = next_batch()
        with _autocast(device, cfg.precision):
            if block is None:
                loss = method.loss(forward, x1, run.gen)
            else:  # the global batch's noise, times and coupling; this rank's rows of it
                loss = method.loss_on(forward, method.draw(x1, run.gen).rows(block))
        run.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        run.opt.step()
        run.sched.step()
        run.step += 1
        step = run.step
        update_ema(min(cfg.ema_decay, (1 + step) / (10 + step)))
        window = window + loss.detach().float()
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = step % cfg.log_every or cfg.log_every
            run.losses.append((step, _logged_loss(window, step, n, parallel)))
        if progress is not None and parallel.main:
            progress(step, run.losses[-1][1] if run.losses else math.nan)
        # evaluate before checkpointing, so the checkpoint of a step holds that step's metrics
        if on_eval is not None and parallel.main and cfg.eval_every and step % cfg.eval_every == 0:
            metrics = _evaluate_ema(on_eval, step, run.ema)
            if metrics is not None:
                run.during.append((step, {k: float(v) for k, v in metrics.items()}))
        if ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps) \
                and ckpt_path is not None and parallel.main:
            run.save(ckpt_path, cfg, started)
        if stop_after is not None and step >= stop_after:
            break
    if distributed:  # no rank returns (and tears the group down) before rank 0 has checkpointed
        torch.distributed.barrier()
    run.net.eval()
    run.ema.eval()
    return TrainResult(run.net, run.ema, run.step, run.losses, time.perf_counter() - started,
                       resumed_from, run.earlier_seconds, run.during)
