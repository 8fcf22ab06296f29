"""Training: exact resumption, divergence handling, safe checkpoints, and learning a 2-D target."""

import math
import os

import pytest
import torch

from harness.core.checkpoint import load_checkpoint, save_checkpoint
from harness.datasets import load_dataset
from harness.errors import CheckpointError, ConfigError, DivergenceError
from harness.core.evaluate import EvalConfig, evaluate_sampling
from harness.core.methods import build_method
from harness.core.metrics import wasserstein2
from harness.models import build_model
from harness.core.train import CHECKPOINT_NAME, TrainConfig, train

CASES = {
    "8gaussians": ("ot-cfm", dict(hidden=32, depth=2)),
    "digits": ("scoreflow", dict(channels=8, channel_mult=(1, 2), num_res_blocks=1,
                                 attention_resolutions=(), groups=4)),
}


def _setup(dataset_name):
    method_name, options = CASES[dataset_name]
    ds = load_dataset(dataset_name, seed=0)
    torch.manual_seed(0)
    model = "mlp" if not ds.is_image else "unet"
    return build_method(method_name), ds, build_model(model, ds.shape, **options)


@pytest.mark.parametrize("dataset_name", list(CASES))
def test_resumed_run_equals_uninterrupted_run(dataset_name, tmp_path):
    cfg = TrainConfig(steps=30, batch_size=32, warmup_steps=5, checkpoint_every=10, log_every=5,
                      ema_decay=0.9)
    method, ds, net = _setup(dataset_name)
    full = train(method, ds, net, cfg, checkpoint_dir=tmp_path / "full")

    method, ds, net = _setup(dataset_name)
    part = train(method, ds, net, cfg, checkpoint_dir=tmp_path / "split", stop_after=20)
    assert part.step == 20
    method, ds, net = _setup(dataset_name)
    torch.manual_seed(123)  # a different global RNG state must not matter: it is checkpointed
    resumed = train(method, ds, net, cfg, checkpoint_dir=tmp_path / "split")
    assert resumed.resumed_from == 20 and resumed.step == 30
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert full.losses == resumed.losses


def test_different_settings_refuse_to_resume(tmp_path):
    method, ds, net = _setup("8gaussians")
    train(method, ds, net, TrainConfig(steps=5, batch_size=8), checkpoint_dir=tmp_path)
    method, ds, net = _setup("8gaussians")
    with pytest.raises(CheckpointError, match="different training settings"):
        train(method, ds, net, TrainConfig(steps=10, batch_size=8, lr=0.5), checkpoint_dir=tmp_path)


class _Poisoned(torch.nn.Module):
    """A network that starts returning NaN after ``after`` forward calls."""

    def __init__(self, net, after):
        super().__init__()
        self.net, self.after, self.calls = net, after, 0

    def forward(self, x, t):
        self.calls += 1
        out = self.net(x, t)
        return out * math.nan if self.calls > self.after else out


def test_nan_loss_fails_clearly_and_keeps_last_checkpoint(tmp_path):
    method, ds, net = _setup("8gaussians")
    cfg = TrainConfig(steps=40, batch_size=8, checkpoint_every=10, log_every=5)
    with pytest.raises(DivergenceError, match=r"loss became nan between steps 16 and 20"):
        train(method, ds, _Poisoned(net, after=17), cfg, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 10
    assert all(torch.isfinite(v).all() for v in state["net"].values())


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_clear_error(tmp_path, damage):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 3, "w": torch.ones(1000)})
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint" * 10,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path)
    method, ds, net = _setup("8gaussians")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(method, ds, net, TrainConfig(steps=5, batch_size=8), checkpoint_dir=tmp_path)


def test_checkpoint_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"step": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {"step": 1})

    def crash(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_bf16_autocast_trains():
    method, ds, net = _setup("8gaussians")
    result = train(method, ds, net, TrainConfig(steps=20, batch_size=16, precision="bf16",
                                                log_every=5))
    assert all(math.isfinite(loss) for _, loss in result.losses)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", -1), ("lr", 0.0),
                                         ("ema_decay", 1.0), ("precision", "fp8"),
                                         ("grad_clip", -1.0)])
def test_bad_training_settings(field, value):
    with pytest.raises(ConfigError, match=field if field != "precision" else "precision"):
        TrainConfig(**{field: value})


def test_fm_ot_learns_8gaussians(tmp_path):
    """W2 threshold: the two-sample noise floor at n = 1000 (~0.3 here) plus 0.12, which a
    converged model reaches; the untrained prior sits at ~1.6, so the bar is far from chance."""
    ds = load_dataset("8gaussians", seed=0)
    method = build_method("fm-ot")
    torch.manual_seed(0)
    net = build_model("mlp", ds.shape, hidden=256, depth=3)
    result = train(method, ds, net, TrainConfig(steps=1500, batch_size=256, lr=1e-3))
    n = 1000
    metrics, samples = evaluate_sampling(method, result.ema, ds, EvalConfig(samples=n), "cpu")
    floor = wasserstein2(load_dataset("8gaussians", seed=7).train[:n], ds.test[:n])
    prior = wasserstein2(torch.randn(n, 2), ds.test[:n])
    assert metrics["w2"] < floor + 0.12, (metrics["w2"], floor)
    assert prior > 4 * metrics["w2"]


def test_eval_hook_runs_on_schedule_and_changes_nothing(tmp_path):
    cfg = TrainConfig(steps=30, batch_size=16, log_every=5, eval_every=10)
    calls = []

    def hook(step, ema):
        assert not ema.training
        calls.append(step)
        g = torch.Generator().manual_seed(step)  # evaluations seed their own generators
        ema(torch.randn(4, 2, generator=g), torch.rand(4, generator=g))

    method, ds, net = _setup("8gaussians")
    with_hook = train(method, ds, net, cfg, on_eval=hook)
    method, ds, net = _setup("8gaussians")
    without = train(method, ds, net, cfg)
    assert calls == [10, 20, 30]
    for a, b in zip(with_hook.net.state_dict().values(), without.net.state_dict().values()):
        assert torch.equal(a, b)


def test_checkpoints_keep_the_hooks_metrics_so_a_resumed_run_returns_them_all(tmp_path):
    """Evaluations run before the checkpoint of their step: resuming at step 20 (or at the end)
    returns steps 10 and 20 from the checkpoint without calling the hook for them again."""
    cfg = TrainConfig(steps=30, batch_size=16, log_every=5, eval_every=10, checkpoint_every=10)
    calls = []

    def hook(step, ema):
        calls.append(step)
        return {"score": float(step) / 10}

    method, ds, net = _setup("8gaussians")
    part = train(method, ds, net, cfg, checkpoint_dir=tmp_path, on_eval=hook, stop_after=20)
    assert part.during == [(10, {"score": 1.0}), (20, {"score": 2.0})] and calls == [10, 20]
    method, ds, net = _setup("8gaussians")
    rest = train(method, ds, net, cfg, checkpoint_dir=tmp_path, on_eval=hook)
    assert rest.resumed_from == 20 and calls == [10, 20, 30]
    assert [step for step, _ in rest.during] == [10, 20, 30]
    method, ds, net = _setup("8gaussians")
    done = train(method, ds, net, cfg, checkpoint_dir=tmp_path, on_eval=hook)
    assert done.resumed_from == 30 and calls == [10, 20, 30] and done.during == rest.during


def test_learning_rate_schedules():
    const = TrainConfig(steps=100, warmup_steps=10)
    assert [const.lr_factor(s) for s in (0, 4, 9, 10, 99)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    decay = TrainConfig(steps=110, warmup_steps=10, lr_schedule="linear-decay")
    assert decay.lr_factor(9) == 1.0 and decay.lr_factor(10) == 1.0
    assert decay.lr_factor(60) == pytest.approx(0.5) and decay.lr_factor(110) == 0.0
    assert "steps" in decay.resume_key() and "steps" not in const.resume_key()
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")


class _RowCounter(torch.nn.Module):
    """Wraps a network and records how many rows each forward call receives."""

    def __init__(self, net):
        super().__init__()
        self.net, self.rows = net, set()

    def forward(self, x, t):
        self.rows.add(x.shape[0])
        return self.net(x, t)


def _train_rank(rank, world, folder):
    """One rank of a gloo process group (spawned): trains and reports what its forward saw."""
    import torch.distributed as dist

    from harness.core.train import Parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/group", rank=rank,
                            world_size=world)
    try:
        method, ds, net = _setup("8gaussians")
        counted = _RowCounter(net)
        out = train(method, ds, counted, _PARALLEL_CFG, checkpoint_dir=folder / "ckpt",
                    parallel=Parallel(rank, world))
        torch.save({"rows": sorted(counted.rows), "losses": out.losses,
                    "net": out.net.state_dict()}, folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


_PARALLEL_CFG = TrainConfig(steps=12, batch_size=32, warmup_steps=3, checkpoint_every=5,
                            log_every=4, ema_decay=0.9)


def test_two_ranks_each_train_on_half_the_batch_and_match_one_process(tmp_path):
    """Ray-free check of the data-parallel loop (tests/test_ddp.py runs it under Ray Train): each
    rank's forward sees its half of the global batch (ot-cfm: the plan is solved over the whole),
    and DDP's averaged gradients give the one-process parameters up to float reduction order."""
    import torch.multiprocessing as mp

    method, ds, net = _setup("8gaussians")
    counted = _RowCounter(net)
    single = train(method, ds, counted, _PARALLEL_CFG)
    assert counted.rows == {32}
    mp.spawn(_train_rank, args=(2, tmp_path), nprocs=2)
    for rank in range(2):
        seen = torch.load(tmp_path / f"rank{rank}.pt")
        rows, losses, state = seen["rows"], seen["losses"], seen["net"]
        assert rows == [16], (rank, rows)
        assert [s for s, _ in losses] == [s for s, _ in single.losses]
        assert [loss for _, loss in losses] == pytest.approx([x for _, x in single.losses],
                                                             rel=1e-5)
        for name, value in single.net.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-6)
    saved = load_checkpoint(tmp_path / "ckpt" / CHECKPOINT_NAME)  # rank 0's: the plain module
    assert saved["step"] == 12 and saved["net"].keys() == single.net.state_dict().keys()


def test_parallel_blocks_split_the_global_batch():
    from harness.core.train import Parallel

    blocks = [Parallel(r, 4).block(32) for r in range(4)]
    assert [(b.start, b.stop) for b in blocks] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    with pytest.raises(ConfigError, match="batch_size 30 must be divisible by the 4"):
        Parallel(0, 4).block(30)
    with pytest.raises(ConfigError, match="rank"):
        Parallel(2, 2)
