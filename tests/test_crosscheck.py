"""fmbench against independent implementations on the same inputs.

Peers: facebookresearch's ``flow_matching`` (likelihood solver, schedulers, affine path) and
``torchcfm`` (conditional flow matchers, exact minibatch OT). Both are test-only: installed from
``benchmarks/requirements.txt`` with ``--no-deps``, never imported by ``harness``. flow_matching is
CC-BY-NC, so it is only called here for comparison; none of its code is copied. Without a peer
these tests skip on a developer machine and fail under CI (``.ci/run`` installs both).

Time conventions: all three use t = 0 noise, t = 1 data (x_t = alpha_t x1 + sigma_t x0), so the
map from a peer's time to fmbench's is the identity; each test says so where it matters.
"""

from __future__ import annotations

import copy
import importlib
import os

import numpy as np
import pytest
import torch
from torchdiffeq import odeint

from harness.datasets import load_dataset
from harness.core.evaluate import sample
from harness.core.likelihood import log_likelihood
from harness.core.methods import build_method
from harness.models import MLP


def peer(module: str):
    """Import a peer package: skipped on a developer machine without it, a failure under CI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        hint = "pip install --no-deps -r benchmarks/requirements.txt"
        if os.environ.get("CI"):
            pytest.fail(f"{module} is not installed; .ci/run installs it ({hint})")
        pytest.skip(f"{module} is not installed ({hint}); CI fails here")


pytestmark = pytest.mark.usefixtures("one_thread")


TRAINED: dict[str, tuple[MLP, torch.Tensor]] = {}


def trained(method_name: str) -> tuple[MLP, torch.Tensor]:
    """A small MLP trained with ``method_name``'s loss for 300 Adam steps on 8gaussians (~1 s),
    and 64 held-out points. Trained rather than random: an untrained field is nearly zero and
    smooth, so likelihood agreement would be trivial and dopri5 would take 3 steps. Cached per
    module run; the weights are fixed by the seeds, not by test order."""
    if method_name not in TRAINED:
        data = load_dataset("8gaussians", seed=0)
        torch.manual_seed(0)
        net = MLP((2,), hidden=64, depth=2, time_dim=32)
        method = build_method(method_name)
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(0)
        for _ in range(300):
            batch = data.train[torch.randint(0, data.train.shape[0], (256,), generator=gen)]
            loss = method.loss(net, batch, gen)
            opt.zero_grad()
            loss.backward()
            opt.step()
        TRAINED[method_name] = (net.eval().requires_grad_(False), data.test[:64])
    net, points = TRAINED[method_name]
    return copy.deepcopy(net), points.clone()


def net_velocity(net):
    """The peers' view of a velocity network: called with the solver's scalar time t, as their
    solvers do (the network broadcasts it over the batch). fm-ot, rectified-flow and fm-diffusion
    predict velocity, so the network output is the field."""

    def velocity(x, t):
        return net(x, t.reshape(()).to(x.dtype))

    return velocity


def standard_normal_log_prob(x):
    """log N(x; 0, I) summed over dimensions, written independently of fmbench's prior."""
    return torch.distributions.Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1)


# -- likelihood ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, tol, bound", [
    (torch.float32, 1e-5, 1e-3),  # the protocol: float32 weights, dopri5 at 1e-5 (the agreed bar: 1e-3 nats)
    (torch.float64, 1e-9, 1e-6),  # tight: what is left at 1e-5 is solver error, not a formula
])
def test_nll_matches_flow_matching_compute_likelihood(dtype, tol, bound):
    """fm-ot NLL of the same weights on the same points: fmbench's ``log_likelihood`` against
    ``ODESolver.compute_likelihood`` (exact divergence, dopri5, same atol = rtol).

    Both integrate from data (t = 1, fm-ot's t_max) to noise (t = 0): flow_matching's time_grid
    [1, 0] is fmbench's [t_max, 0], and its ``log_p0`` is the standard normal prior. Measured
    here (NLL ~3.58 nats): max |difference| 2.4e-4 nats at 1e-5 (float32; 2.6e-4 in float64),
    each side 4-6e-4 off a float64 1e-11 reference, and 1.7e-8 at 1e-9 in float64. fmbench lands
    its last step on t = 0 (torchdiffeq's ``step_t``); flow_matching overshoots and interpolates
    back, so the two step sequences differ only at the end.
    """
    ode_solver = peer("flow_matching.solver").ODESolver
    net, x1 = trained("fm-ot")
    net, x1 = net.to(dtype), x1.to(dtype)
    ours = log_likelihood(build_method("fm-ot"), net, x1, divergence="exact", atol=tol, rtol=tol)
    _, theirs = ode_solver(net_velocity(net)).compute_likelihood(
        x1, standard_normal_log_prob, step_size=None, method="dopri5", atol=tol, rtol=tol,
        time_grid=torch.tensor([1.0, 0.0], dtype=dtype), exact_divergence=True)
    assert ours.log_prob.shape == theirs.shape == (x1.shape[0],)
    assert ours.log_prob.dtype == theirs.dtype == dtype
    # The comparison discriminates: the flow moves log-density by far more than the bound (a sign
    # error in the divergence would miss by twice this).
    moved = (ours.log_prob - standard_normal_log_prob(x1)).abs().mean()
    assert moved > 1.0, float(moved)
    diff = (ours.log_prob.double() - theirs.double()).abs().max()
    assert diff <= bound, f"max |NLL difference| {float(diff):.3g} nats > {bound}"


# -- paths ---------------------------------------------------------------------------------------

def _schedule(path, t):
    return {"alpha": path.alpha(t), "sigma": path.sigma(t), "d_alpha": path.d_alpha(t),
            "d_sigma": path.d_sigma(t)}


def _peer_schedule(scheduler, t):
    out = scheduler(t)
    return {"alpha": out.alpha_t, "sigma": out.sigma_t, "d_alpha": out.d_alpha_t,
            "d_sigma": out.d_sigma_t}


@pytest.mark.parametrize("method_name", ["rectified-flow", "fm-ot"])
def test_ot_path_matches_cond_ot_scheduler(method_name):
    """alpha_t = t, sigma_t = 1 - t and their derivatives against ``CondOTScheduler`` on a float64
    grid of t in [0, 1] (same time convention, identity map). CondOT has no sigma_min, so fm-ot is
    compared with sigma_min = 0; its default sigma_min = 1e-4 is checked against torchcfm's
    ``TargetConditionalFlowMatcher`` in the pair tests below."""
    schedulers = peer("flow_matching.path.scheduler")
    options = {"sigma_min": 0.0} if method_name == "fm-ot" else {}
    path = build_method(method_name, **options).path
    assert path.t_max == 1.0
    t = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    ours, theirs = _schedule(path, t), _peer_schedule(schedulers.CondOTScheduler(), t)
    for key in ours:
        torch.testing.assert_close(ours[key].expand_as(t), theirs[key], rtol=0, atol=1e-15,
                                   msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("method_name", ["fm-diffusion", "ddpm", "scoreflow"])
def test_vp_path_matches_vp_scheduler(method_name):
    """The VP path of every VP method against ``VPScheduler()`` with its own defaults.

    flow_matching defines T = b (1 - t) + (B - b)(1 - t)^2 / 2, alpha_t = exp(-T/2),
    sigma_t = sqrt(1 - exp(-T)) with b = beta_min = 0.1, B = beta_max = 20 and t = 0 noise:
    fmbench's T(s) at diffusion time s = 1 - t, so the time map is the identity and the constants
    must agree. Compared on a float64 grid of t in [0, t_max] (t_max = 1 - 1e-5, fmbench's cut-off:
    the peer's d_sigma is infinite at t = 1). Relative error, since |d_sigma| grows to 50 at t_max;
    the peer's 1 - exp(-T) loses digits there (fmbench uses expm1), measured 2.2e-11 at most."""
    schedulers = peer("flow_matching.path.scheduler")
    path = build_method(method_name).path
    scheduler = schedulers.VPScheduler()
    constants = (path.beta_min, path.beta_max), (scheduler.beta_min, scheduler.beta_max)
    assert constants[0] == constants[1] == (0.1, 20.0), constants
    t = torch.linspace(0.0, path.t_max, 2001, dtype=torch.float64)
    ours, theirs = _schedule(path, t), _peer_schedule(scheduler, t)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-9, atol=0,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_vp_pairs_and_epsilon_conversion_match_affine_prob_path():
    """On the VP path: x_t, dx_t from ``AffineProbPath(VPScheduler()).sample`` for the same
    (x0, x1, t), and DDPM's epsilon -> velocity conversion against the peer's
    ``epsilon_to_velocity`` (a wrong conversion would move ddpm's NFE and NLL silently)."""
    affine = peer("flow_matching.path")
    schedulers = peer("flow_matching.path.scheduler")
    ddpm = build_method("ddpm")
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(256, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(256, 2, generator=gen, dtype=torch.float64) * 2.0 + 1.0
    t = torch.rand(256, generator=gen, dtype=torch.float64) * ddpm.t_max
    ours = ddpm.path.sample(x0, x1, t)
    peer_path = affine.AffineProbPath(schedulers.VPScheduler())
    theirs = peer_path.sample(x0, x1, t)
    torch.testing.assert_close(ours.x_t, theirs.x_t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours.dx_t, theirs.dx_t, rtol=1e-9, atol=1e-9)
    # The conditional velocity is what the exact noise x0 converts to.
    ours_v = ddpm.velocity(x0, ours.x_t, t)
    theirs_v = peer_path.epsilon_to_velocity(x0, ours.x_t, t[:, None])
    torch.testing.assert_close(ours_v, theirs_v, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ours_v, ours.dx_t, rtol=1e-7, atol=1e-7)


# -- pairs ---------------------------------------------------------------------------------------

def _data(n: int = 128):
    gen = torch.Generator().manual_seed(5)
    return torch.randn(n, 2, generator=gen, dtype=torch.float64) * 0.5 + 2.0


@pytest.mark.parametrize("method_name, options", [("rectified-flow", {}),
                                                  ("fm-ot", {"sigma_min": 0.0})])
def test_straight_pairs_match_conditional_flow_matcher(method_name, options):
    """x_t and u_t of ``Method.draw`` against torchcfm's ``ConditionalFlowMatcher(sigma=0)`` for
    the same (x0, x1, t). torchcfm's sigma is the std of a Gaussian tube of constant width around
    the line t x1 + (1 - t) x0, with u_t = x1 - x0 whatever the noise: a different path from
    fmbench's sigma_min (sigma_t = 1 - (1 - sigma_min) t), and the two coincide only at 0."""
    cfm = peer("torchcfm.conditional_flow_matching")
    x1 = _data()
    ours = build_method(method_name, **options).draw(x1, torch.Generator().manual_seed(7))
    # draw gives float32 noise and times; fmbench's path computes in x1's dtype, so the peer gets
    # the same values in float64 (torchcfm computes 1 - t in t's own dtype).
    x0, t_in = ours.x0.to(x1.dtype), ours.t.to(x1.dtype)
    t, xt, ut = cfm.ConditionalFlowMatcher(sigma=0.0).sample_location_and_conditional_flow(
        x0, x1, t=t_in)
    assert torch.equal(t, t_in) and 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    torch.testing.assert_close(ours.x_t, xt, rtol=0, atol=1e-14)
    torch.testing.assert_close(ours.dx_t, ut, rtol=0, atol=1e-14)


def test_fm_ot_pairs_with_sigma_min_match_target_conditional_flow_matcher():
    """fm-ot at its default sigma_min = 1e-4 is Lipman et al.'s path, which torchcfm implements as
    ``TargetConditionalFlowMatcher(sigma=sigma_min)``: mu_t = t x1, sigma_t = 1 - (1 - sigma) t
    with the noise as x0, and u_t = (x1 - (1 - sigma) x_t) / sigma_t, algebraically fmbench's
    x1 - (1 - sigma_min) x0. Its public pieces are called with epsilon = fmbench's x0."""
    cfm = peer("torchcfm.conditional_flow_matching")
    method = build_method("fm-ot")
    sigma_min = method.path.sigma_min
    assert sigma_min == 1e-4
    x1 = _data()
    ours = method.draw(x1, torch.Generator().manual_seed(7))
    x0, t_in = ours.x0.to(x1.dtype), ours.t.to(x1.dtype)  # same values, x1's dtype (see above)
    target = cfm.TargetConditionalFlowMatcher(sigma=sigma_min)
    xt = target.sample_xt(x0, x1, t_in, x0)
    ut = target.compute_conditional_flow(x0, x1, t_in, xt)
    torch.testing.assert_close(ours.x_t, xt, rtol=0, atol=1e-14)
    # torchcfm divides by sigma_t (down to ~1e-4 near t = 1), so its rounding grows there.
    torch.testing.assert_close(ours.dx_t, ut, rtol=0, atol=1e-10)
    # Not torchcfm's ConditionalFlowMatcher with sigma = sigma_min: that is another path.
    tube = cfm.ConditionalFlowMatcher(sigma=sigma_min)
    _, xt_tube, _ = tube.sample_location_and_conditional_flow(x0, x1, t=t_in)
    assert not torch.allclose(ours.x_t, xt_tube, rtol=0, atol=1e-6)


OT_SHIFT = torch.tensor([4.0, -3.0], dtype=torch.float64)


def _ot_batch(seed: int = 11, n: int = 16):
    """fmbench's noise for ``Method.draw`` with this seed (draw's first use of its generator), and
    data x1 = a shuffled copy of it plus a shift. For any permutation pi,
    sum_i |x0_i - x1_pi(i)|^2 = sum_i |x0_i - x0_sigma(i)|^2 + n |shift|^2 (the cross terms
    cancel), so the unique optimal plan pairs x0_i with x0_i + shift; any other permutation costs
    at least 2 d_min^2 more (d_min: the closest two noise points, here > 0.2)."""
    x0 = torch.randn((n, 2), generator=torch.Generator().manual_seed(seed))
    d = torch.cdist(x0.double(), x0.double()) + torch.eye(n) * 1e9
    assert float(d.min()) > 0.2, "pick a seed whose noise points are well separated"
    shuffle = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    assert not torch.equal(shuffle, torch.arange(n))
    return x0, x0.double()[shuffle] + OT_SHIFT


@pytest.mark.parametrize("sigma_min", [0.0, 1e-4])
def test_ot_cfm_coupling_matches_exact_ot_conditional_flow_matcher(sigma_min):
    """ot-cfm's minibatch coupling against torchcfm's
    ``ExactOptimalTransportConditionalFlowMatcher`` on a batch whose OT plan is a known unique
    permutation (see ``_ot_batch``): both must pick it.

    The plan: torchcfm's ``ot_sampler.get_map`` is a permutation matrix equal to fmbench's pairing.
    The pairs: torchcfm's ``sample_location_and_conditional_flow`` draws rows from the plan (with
    replacement, from numpy's global RNG, seeded here); every row it returns must be one of
    fmbench's pairs, with x_t and u_t equal to fmbench's path at the same (x0, x1, t). torchcfm
    (sigma = 0) is the straight path, so x_t/u_t are compared for sigma_min = 0 only; at the
    default 1e-4 the coupling is compared (the path is the Target CFM test's)."""
    cfm = peer("torchcfm.conditional_flow_matching")
    method = build_method("ot-cfm", sigma_min=sigma_min)
    x0, x1 = _ot_batch()
    ours = method.draw(x1, torch.Generator().manual_seed(11))
    assert torch.equal(ours.x0, x0), "Method.draw no longer draws its noise first"
    # Known answer: fmbench un-shuffled the data so that x1_i = x0_i + shift.
    torch.testing.assert_close(ours.x1, x0.double() + OT_SHIFT, rtol=0, atol=0)

    matcher = cfm.ExactOptimalTransportConditionalFlowMatcher(sigma=0.0)
    x0d = x0.double()
    plan = matcher.ot_sampler.get_map(x0d, x1)
    n = x0.shape[0]
    assert np.allclose(plan.sum(axis=1), 1.0 / n) and np.count_nonzero(plan > 1e-12) == n
    torch.testing.assert_close(x1[torch.as_tensor(plan.argmax(axis=1))], ours.x1, rtol=0, atol=0)

    if sigma_min != 0.0:
        return
    # torchcfm draws its rows with numpy's global RNG; the same seed replays the same draw
    # through ot_sampler.sample_plan, which names the rows (x0 rows are copied, so found exactly).
    t_in = ours.t.double()
    np.random.seed(0)
    t, xt, ut = matcher.sample_location_and_conditional_flow(x0d, x1, t=t_in)
    np.random.seed(0)
    drawn_x0, drawn_x1 = matcher.ot_sampler.sample_plan(x0d, x1)
    index = torch.cdist(drawn_x0, x0d).argmin(dim=1)
    torch.testing.assert_close(drawn_x0, x0d[index], rtol=0, atol=0)
    torch.testing.assert_close(drawn_x1, ours.x1[index], rtol=0, atol=0)
    expected = method.path.sample(x0d[index], ours.x1[index], t_in)
    torch.testing.assert_close(t, t_in, rtol=0, atol=0)
    torch.testing.assert_close(xt, expected.x_t, rtol=0, atol=1e-14)
    torch.testing.assert_close(ut, expected.dx_t, rtol=0, atol=1e-14)


# -- NFE -----------------------------------------------------------------------------------------

class CallCounter(torch.nn.Module):
    """The plain side's own counter: forward calls of the network, nothing else."""

    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


@pytest.mark.parametrize("method_name", ["fm-ot", "fm-diffusion"])
def test_sampling_nfe_matches_plain_torchdiffeq(method_name):
    """fmbench's sampling NFE (``harness.core.evaluate.sample``: dopri5 at atol = rtol = 1e-5) against a
    plain ``torchdiffeq.odeint`` of the same weights with a call counter around the network.

    Mirrored explicitly in the plain call: the time span [0, t_max] (fm-diffusion's VP cut-off
    t_max = 1 - 1e-5; 1 for fm-ot), the state's dtype for the time grid, and fmbench's
    ``step_t = [t_max]``, which makes dopri5 land a step on the end time instead of overshooting
    and interpolating back (past t_max the VP path is undefined). Both predict velocity, so the
    plain field is the network output at the scalar time."""
    method = build_method(method_name)
    net, _ = trained(method_name)
    noise = torch.randn(256, 2, generator=torch.Generator().manual_seed(2))
    tol = 1e-5
    with torch.no_grad():
        sol, nfe = sample(method, net, noise, "dopri5", tol=tol)
        counter = CallCounter(net)
        span = torch.tensor([0.0, method.t_max], dtype=noise.dtype)
        velocity = net_velocity(counter)
        plain = odeint(lambda t, x: velocity(x, t), noise, span, method="dopri5", atol=tol,
                       rtol=tol, options={"step_t": span[1:]})
    assert nfe == counter.calls, f"fmbench NFE {nfe}, plain torchdiffeq {counter.calls}"
    assert nfe >= 26  # a real adaptive solve (measured 38 and 68), not a 3-step one
    # Bitwise the same samples: without step_t the counts happen to match here, but the samples
    # move by 1e-5 (fm-ot) and 3e-4 (fm-diffusion), so this catches a dropped step_t too.
    torch.testing.assert_close(sol.x, plain[-1], rtol=0, atol=0)
