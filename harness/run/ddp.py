"""Data-parallel training of one trial with Ray Train: PyTorch DDP over ``workers`` processes
(NCCL on GPUs, gloo on CPUs), on one node or several.

The suite's batch size is the global batch; each worker trains on an equal block of it (see
:class:`harness.core.train.Parallel`), so the run reaches the parameters one worker would. Our own
checkpoint in ``checkpoint_dir`` is what a run resumes from, never Ray Train's: when a worker dies,
Ray Train restarts the whole worker group and every rank loads that checkpoint. Rank 0 alone
writes checkpoints and logs to MLflow, exactly as :func:`harness.run.tasks.train_task` does for
one worker.

Ray Train here is V2 (the default in Ray 2.60, ``RAY_TRAIN_V2_ENABLED``): ``fit()`` starts a
controller actor that owns the worker group, retries every worker-group failure alike (it cannot
tell a lost worker from an exception) up to ``FailureConfig.max_failures``, and returns the rank-0
training function's return value as ``Result.return_value``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core import storage as stores
from harness.errors import ConfigError, DivergenceError, HarnessError
from harness.run.tasks import train_logged
from harness.run.tracking import RunLogger
from harness.core.train import Parallel

WORKER_RETRIES = 3
"""Times Ray Train restarts the worker group after a worker dies or raises; each restart resumes
from the trial's last checkpoint. A diverged loss, which every rank sees alike, ends the trial at
once instead (Ray Train V2 would retry it like any other failure)."""

RAY_TRAIN_FOLDER = "ray-train"
"""Ray Train's own run folder inside the trial's checkpoint folder (which every node reaches)."""


def train_parallel_task(spec, checkpoint_dir: str, logger: RunLogger, resources) -> dict[str, Any]:
    """The Ray task that trains one trial on ``resources.workers`` DDP workers: it only
    coordinates (it holds no resources), the workers hold ``resources`` each."""
    return train_distributed(spec, checkpoint_dir, logger, workers=resources.workers,
                             cpus_per_worker=resources.cpus, gpus_per_worker=resources.gpus)


def _train_storage(checkpoint_dir: str) -> str:
    """Ray Train's storage_path: an object-storage URI as it is (Ray Train resolves it through
    pyarrow.fs as fmbench does), a local folder made absolute."""
    return checkpoint_dir if stores.is_uri(checkpoint_dir) else str(Path(checkpoint_dir).resolve())


def train_distributed(spec, checkpoint_dir: str, logger: RunLogger, *, workers: int,
                      cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0) -> dict[str, Any]:
    """Train one trial on ``workers`` DDP workers, each with ``cpus_per_worker`` CPUs and
    ``gpus_per_worker`` GPUs, resuming from ``checkpoint_dir``. Blocks until training ends; call it
    from the driver or from a Ray task (which needs no resources of its own). Returns what
    :func:`harness.run.tasks.train_task` returns: ``{"step", "seconds", "resumed_from", "device"}``
    (seconds and resumed_from of the attempt that finished)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    if workers < 1:
        raise ConfigError(f"training workers must be >= 1, got {workers}")
    Parallel(0, workers).block(spec.train.batch_size)  # fail here, before any worker starts
    resources = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": spec, "checkpoint_dir": str(checkpoint_dir), "logger": logger},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=RAY_TRAIN_FOLDER,
                             storage_path=_train_storage(checkpoint_dir),
                             failure_config=FailureConfig(max_failures=WORKER_RETRIES)))
    try:
        value = trainer.fit().return_value
    except TrainingFailedError as exc:
        raise _first_harness_error(exc) or exc
    if "error" in value:
        raise value["error"]
    return value


def _first_harness_error(exc: BaseException) -> HarnessError | None:
    """The user-facing error a worker raised in the last attempt, if any (Ray Train wraps each
    worker's exception with its traceback), so the trial fails with its one-line message."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        cause = getattr(failures[rank], "_base_exc", failures[rank])
        if isinstance(cause, HarnessError):
            return cause
    return None


def _worker_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """One rank's training (Ray Train calls it in every worker, the process group already up)."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    parallel = Parallel(context.get_world_rank(), context.get_world_size())
    try:
        return train_logged(config["spec"], config["checkpoint_dir"], config["logger"],
                            ray.train.torch.get_device(), parallel)
    except DivergenceError as exc:
        # Every rank checks the same all-reduced loss and stops at the same step, so returning
        # (rather than raising, which Ray Train would retry) leaves no rank waiting on another.
        # Other errors may strike one rank only; raised, they make Ray Train stop the others.
        return {"error": exc}


