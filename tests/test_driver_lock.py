"""One driver per (suite, store), with real ``fmbench run`` processes: the lease on
the invocation run, waiting for it, taking over a SIGKILLed driver's lease, closing the runs a
dead driver left open, and a bounded Ray connect that creates no runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from harness.run import invocation, record
from harness.run.invocation import (DRIVER_GONE, HEARTBEAT, HOST, LEASE, LOST_ELECTION, PID,
                                SuiteLockedError, acquire, close_stale, gone_count)
from harness.run.record import INVOCATION, KEY, KIND, REASON, SUITE, TRIAL, State
from harness.run.tracking import Tracker
from tests.helpers import store_client
from tests.test_reliability import _checkpoint_step, _wait_for, _write

ONE_LINE = re.compile(r"fmbench: error: [^\n]+\n")


def _runs(uri: str, experiment: str, kind: str) -> list:
    client = store_client(uri)  # polled while a driver may be creating the store
    exp = client.get_experiment_by_name(experiment) if client else None
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000)
            if r.data.tags.get(KIND) == kind]


def _env(**extra) -> dict:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **extra}
    env.pop("RAY_ADDRESS", None)  # set by the ray_cluster fixture: never let `auto` find it
    return env


def _fmbench(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", *args]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- the election, in process (no Ray) ------------------------------------------------------------
def test_second_candidate_loses_names_the_holder_and_closes_its_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "elect")
    first = acquire(tracker, "elect", "first", {}, wait=False, settle=0.05)
    try:
        with pytest.raises(SuiteLockedError) as err:
            acquire(tracker, "elect", "second", {}, wait=False, settle=0.05)
        text = str(err.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, started 20" in text
        assert first.run_id in text and "--wait" in text and "\n" not in text
        runs = {r.info.run_name: r for r in _runs(uri, "elect", INVOCATION)}
        assert runs["first"].info.status == State.RUNNING.status
        assert runs["first"].data.tags[LEASE] == invocation.HELD
        assert runs["second"].info.status == State.KILLED.status
        assert runs["second"].data.tags[REASON] == LOST_ELECTION
    finally:
        first.release(State.FINISHED)
    # Released: the next candidate wins at once.
    third = acquire(tracker, "elect", "third", {}, wait=False, settle=0.05)
    third.release(State.FINISHED)


def test_simultaneous_candidates_elect_exactly_one(tmp_path):
    """Eight candidates created within milliseconds of each other: every one sees the others
    after the settle delay and they all elect the same (oldest) one."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "race").connect()
    barrier, results = threading.Barrier(8), []

    def candidate(i):
        barrier.wait()
        try:
            results.append(("won", acquire(Tracker(uri, "race"), "race", f"c{i}", {}, wait=False,
                                           settle=1.0)))
        except SuiteLockedError as exc:
            results.append(("lost", exc))

    threads = [threading.Thread(target=candidate, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    won = [lease for outcome, lease in results if outcome == "won"]
    try:
        assert len(results) == 8 and len(won) == 1, results
    finally:
        for lease in won:
            lease.release(State.FINISHED)


def test_stale_invocation_and_its_open_trials_are_closed_with_the_reason(tmp_path, monkeypatch):
    """A driver that stopped beating (its heartbeat older than the lease) is gone: its invocation
    and its RUNNING/SCHEDULED trial runs become KILLED; finished and live ones are untouched."""
    monkeypatch.setenv("FMBENCH_LEASE_S", "5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "stale")
    old = time.time() - 3600
    dead = tracker.start_run("dead", {KIND: INVOCATION, SUITE: "stale", HEARTBEAT: f"{old}"})
    legacy = tracker.start_run("legacy", {KIND: INVOCATION, SUITE: "stale"})  # never beat
    live = tracker.start_run("live", {KIND: INVOCATION, SUITE: "stale",
                                      HEARTBEAT: f"{time.time()}"})
    other = tracker.start_run("other", {KIND: INVOCATION, SUITE: "another-suite",
                                        HEARTBEAT: f"{old}"})
    trials = {state: tracker.start_run(state.value, {KIND: TRIAL, SUITE: "stale"},
                                       parent_id=dead.run_id, status=state.status)
              for state in (State.RUNNING, State.SCHEDULED, State.FINISHED)}
    # The legacy run started just now: younger than the lease, so it still counts as live.
    assert close_stale(uri, "stale", "stale") == [dead.run_id]
    client = MlflowClient(uri)
    run = client.get_run(dead.run_id)
    assert run.info.status == State.KILLED.status
    assert re.fullmatch(rf"{DRIVER_GONE}: no heartbeat since 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        run.data.tags[REASON])
    for state, logger in trials.items():
        after = client.get_run(logger.run_id)
        assert State.of(after.info.status) is (state if state.ended else State.KILLED)
        if not state.ended:
            assert after.data.tags[REASON].startswith(DRIVER_GONE)
    assert client.get_run(live.run_id).info.status == State.RUNNING.status
    assert client.get_run(other.run_id).info.status == State.RUNNING.status  # another suite's
    # Once older than the lease, a driver that never beat is gone too.
    later = set(close_stale(uri, "stale", "stale", now=time.time() + 10))
    assert later == {legacy.run_id, live.run_id}
    assert close_stale(uri, "missing-experiment", "x") == []  # nothing created


def test_status_and_report_close_stale_invocations_and_the_report_says_so(tmp_path,
                                                                          monkeypatch):
    from harness.cli import main
    from harness.report.collect import Store

    monkeypatch.setenv("FMBENCH_LEASE_S", "5")
    path = _write(tmp_path, "gone")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "gone")
    old = f"{time.time() - 600}"
    first = tracker.start_run("first", {KIND: INVOCATION, SUITE: "gone", HEARTBEAT: old})
    assert main(["status", str(path), "--tracking-uri", uri]) == 0
    assert MlflowClient(uri).get_run(first.run_id).info.status == State.KILLED.status
    assert gone_count(Store(uri, "gone").runs("gone")) == 1
    third = tracker.start_run("third", {KIND: INVOCATION, SUITE: "gone", HEARTBEAT: old})
    from harness.report import build_report

    report = build_report(path, uri, tmp_path / "report", log=False)
    assert MlflowClient(uri).get_run(third.run_id).info.status == State.KILLED.status
    assert "2 invocations were killed (driver gone)" in report.status.banner()


# -- the watchdog that ends a killed driver's Ray node ---------------------------------------------
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_watchdog_ends_only_the_processes_of_its_node_when_the_driver_is_gone(tmp_path):
    """Stand-ins for a node's processes: one logging into the node's session folder, one with
    the node's id in its environment; a bystander logs elsewhere. Closing the driver's end of
    the pipe (what its death does) ends the first two within seconds, never the third."""
    from harness.run.reaper import Watchdog

    session, elsewhere = tmp_path / "session_1", tmp_path / "session_10"
    session.mkdir()
    elsewhere.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    with open(session / "worker.out", "w") as log, open(elsewhere / "other.out", "w") as other:
        logging_there = subprocess.Popen(sleeper, stdout=log)
        with_id = subprocess.Popen(sleeper, env={**os.environ, "RAY_NODE_ID": "n1"})
        bystander = subprocess.Popen(sleeper, stdout=other,
                                     env={**os.environ, "RAY_NODE_ID": "n10"})
    driver_log = open(session / "python-core-driver.log", "w")  # as a Ray driver has
    try:
        watchdog = Watchdog("n1", str(session))
        time.sleep(1.0)
        assert all(p.poll() is None for p in (logging_there, with_id, bystander))
        started = time.monotonic()
        watchdog.close(timeout=30)
        assert watchdog.proc.returncode == 0
        assert logging_there.wait(10) == -signal.SIGTERM and with_id.wait(10) == -signal.SIGTERM
        assert time.monotonic() - started < 10
        assert bystander.poll() is None
        # This process, the watchdog's parent, logs into the session too and was spared: a
        # SIGTERM would have ended this test here.
    finally:
        driver_log.close()
        for proc in (logging_there, with_id, bystander):
            proc.kill()
            proc.wait()


# -- Ray connect: bounded, one line, nothing created -----------------------------------------------
def _free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["refused", "silent", "auto"])
def test_no_ray_cluster_is_one_line_and_creates_no_runs(tmp_path, case):
    path = _write(tmp_path, "noray", steps=20, every=10)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    listener = None
    if case == "refused":
        address = f"127.0.0.1:{_free_closed_port()}"
    elif case == "silent":  # accepts connections, never speaks Ray
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        address = f"127.0.0.1:{listener.getsockname()[1]}"
    else:
        address = "auto"
    prefix = []
    if case == "auto":  # Ray's `auto` joins any cluster it sees running on this machine
        prefix = ["unshare", "--pid", "--fork", "--mount-proc"]  # a process namespace sees none
        if subprocess.run([*prefix, "true"], capture_output=True).returncode != 0:
            pytest.skip("unshare --pid is not permitted here")
    started = time.monotonic()
    try:
        proc = subprocess.run([*prefix, *_fmbench("run", str(path), "--tracking-uri", uri,
                                                  "--address", address, "--connect-timeout", "3")],
                              capture_output=True, text=True, timeout=120, env=_env())
    finally:
        if listener is not None:
            listener.close()
    seconds = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "fmbench: error" in line]
    assert errors == [proc.stderr.strip().splitlines()[-1]], proc.stderr[-2000:]
    assert f"no Ray cluster answered at {address}" in errors[0]
    if case == "silent":
        assert errors[0].endswith("within 3 s")
    if case == "auto":
        # Ray says it found none, unless its own search outlasts the timeout on a busy machine.
        assert errors[0].endswith(("Could not find any running Ray instance", "within 3 s"))
    assert "Traceback" not in proc.stderr
    assert _runs(uri, "noray", INVOCATION) == [] and _runs(uri, "noray", TRIAL) == []
    assert seconds < 60


# -- two real drivers ------------------------------------------------------------------------------
def test_two_drivers_on_one_suite_one_trains_the_other_exits_or_waits(ray_cluster, tmp_path):
    """Driver A trains; B, started while A holds the suite, exits 2 with one line naming A's
    host, pid and start; C with --wait waits for A and then finds nothing left to train."""
    path = _write(tmp_path, "twice", methods="[fm-ot, rectified-flow]", steps=600, every=50,
                  cpus=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "twice").connect()  # the store exists before the drivers race for it
    command = _fmbench("run", str(path), "--tracking-uri", uri, "--address",
                       ray_cluster.address)
    a = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env())
    try:
        def a_trains():
            if a.poll() is not None:
                raise AssertionError(f"driver A exited early: {a.stderr.read()[-2000:]}")
            held = [r for r in _runs(uri, "twice", INVOCATION)
                    if r.data.tags.get(LEASE) == invocation.HELD]
            return held and _runs(uri, "twice", TRIAL)
        _wait_for(a_trains, 180, "driver A to hold the suite and create its trial runs")
        c = subprocess.Popen([*command, "--wait"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env())
        b = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=180)
        a_out, a_err = a.communicate(timeout=400)
        c_out, c_err = c.communicate(timeout=400)
    finally:
        for proc in (a, locals().get("c")):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert a.returncode == 0, a_err[-2000:]
    assert "2 finished, 0 failed, 0 skipped" in a_out
    lines = b.stderr.splitlines()  # the suite's size, then the error
    assert b.returncode == 2 and len(lines) == 2 and ONE_LINE.fullmatch(lines[-1] + "\n"), \
        b.stderr[-2000:]
    assert (f"suite 'twice' is being run by another driver: host {socket.gethostname()}, "
            f"pid {a.pid}, started 20") in b.stderr
    assert c.returncode == 0, c_err[-2000:]
    assert f"waiting for the driver of suite 'twice': host {socket.gethostname()}, pid {a.pid}" \
        in c_err
    assert "0 finished, 0 failed, 2 skipped" in c_out

    trials = _runs(uri, "twice", TRIAL)
    assert len(trials) == 2 and len({r.data.tags[KEY] for r in trials}) == 2  # one run per trial
    client = MlflowClient(uri)
    for run in trials:  # trained once: every loss point logged once, final metrics once
        assert run.info.status == State.FINISHED.status
        steps = [m.step for m in client.get_metric_history(run.info.run_id, record.LOSS)]
        assert sorted(steps) == list(range(10, 601, 10))
        assert len(client.get_metric_history(run.info.run_id, record.final("nfe"))) == 1
    invocations = {r.data.tags[PID]: r for r in _runs(uri, "twice", INVOCATION)}
    assert invocations[str(a.pid)].info.status == State.FINISHED.status
    assert invocations[str(c.pid)].info.status == State.FINISHED.status
    assert len(invocations) == 2  # B saw A's live lease before it created anything


def test_sigkilled_driver_lease_is_taken_over_and_its_local_ray_ends(tmp_path):
    """Driver A starts its own Ray (on 127.0.0.1) and is SIGKILLed mid-training. Every process of
    its Ray node ends within seconds; B with --wait takes over once A's heartbeat is older than
    the lease, closes A's invocation as "driver gone", resumes the trial in its own run, sums
    the training time of both attempts and clears the failure tag when the trial finishes."""
    path = _write(tmp_path, "takeover", steps=1500, every=50, cpus=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "takeover").connect()
    env = _env(FMBENCH_LEASE_S="4")
    command = _fmbench("run", str(path), "--tracking-uri", uri)
    a = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    folder = tmp_path / "ckpt" / "takeover"
    try:
        def training():
            if a.poll() is not None:
                raise AssertionError(f"driver A exited early: {a.stderr.read()[-2000:]}")
            keys = [r.data.tags[KEY] for r in _runs(uri, "takeover", TRIAL)]
            return keys and _checkpoint_step(folder / keys[0]) >= 100 and keys[0]
        key = _wait_for(training, 240, "driver A's trial to checkpoint", poll=0.5)
        ray_processes = _descendants(a.pid)
        raylets = [p for p in ray_processes if Path(f"/proc/{p}/comm").read_text().strip()
                   == "raylet"]
        assert len(raylets) == 1
        cmdline = Path(f"/proc/{raylets[0]}/cmdline").read_bytes().split(b"\0")
        assert b"--node_ip_address=127.0.0.1" in cmdline  # loopback, not the network address
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate(timeout=60)
    killed_at = time.monotonic()
    try:
        _wait_for(lambda: not any(_alive(p) for p in ray_processes), 30,
                  "A's Ray processes to end")
    except AssertionError:
        left = {p: Path(f"/proc/{p}/comm").read_text().strip() for p in ray_processes
                if _alive(p)}
        raise AssertionError(f"still running 30 s after the SIGKILL: {left}") from None
    ended_after = time.monotonic() - killed_at
    reached = _checkpoint_step(folder / key)

    b = subprocess.run([*command, "--wait"], capture_output=True, text=True, env=env,
                       timeout=600)
    assert b.returncode == 0, b.stderr[-2000:]
    assert "1 finished, 0 failed, 0 skipped" in b.stdout
    invocations = {r.data.tags[PID]: r for r in _runs(uri, "takeover", INVOCATION)}
    dead = invocations[str(a.pid)]
    assert dead.info.status == State.KILLED.status
    assert dead.data.tags[REASON].startswith(f"{DRIVER_GONE}: no heartbeat since ")
    assert dead.data.tags[HOST] == socket.gethostname()
    assert sorted(State.of(r.info.status) for r in invocations.values()) == [State.FINISHED,
                                                                             State.KILLED]
    (trial,) = _runs(uri, "takeover", TRIAL)  # reopened, not duplicated
    assert trial.info.status == State.FINISHED.status and REASON not in trial.data.tags
    client = MlflowClient(uri)
    starts = [m.step for m in client.get_metric_history(trial.info.run_id,
                                                        record.ATTEMPT_START)]
    assert sorted(starts)[0] == 0 and len(starts) == 2 and sorted(starts)[1] >= 100
    metrics = trial.data.metrics
    total, attempt = metrics[record.TRAIN_S], metrics[record.TRAIN_ATTEMPT_S]
    assert total > attempt > 0  # the first attempt's time (up to its checkpoint) is counted
    print(f"A's Ray ended {ended_after:.1f} s after SIGKILL; A reached step {reached}; "
          f"train_s {total:.1f} = this attempt {attempt:.1f} + earlier {total - attempt:.1f}")
    assert invocation.lease_seconds() == 60.0  # the test's lease never leaked into this process
