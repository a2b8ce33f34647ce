"""The simulated engine: known answers (M/D/1, a lone request, batched decode), conservation, KV pressure, balancing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cascadia_sky.catalog import get_gpu
from cascadia_sky.models import get_model
from cascadia_sky.perf.step import Deployment, StepModel, step_model
from cascadia_sky.sim import engine
from cascadia_sky.sim.engine import (
    Replica,
    StageRequests,
    kv_capacity_tokens,
    run_closed_loop,
    run_stage,
)
from cascadia_sky.sim.simulate import reference_latency


def _llama8b(tp: int = 1, pp: int = 1) -> StepModel:
    return step_model(Deployment(get_model("meta-llama/Llama-3.1-8B"), get_gpu("H100"), tp, pp))


def _poisson(rate: float, n: int, seed: int = 1) -> np.ndarray:
    t = np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))
    return t - t[0]


def _check_conserved(req: StageRequests, reps: list[Replica] | None = None) -> None:
    arrive, admit = np.array(req.t_arrive), np.array(req.t_admit)
    first, done = np.array(req.t_first), np.array(req.t_done)
    assert np.isfinite(done).all(), "every request finishes"
    assert (arrive <= admit + 1e-12).all() and (admit < first).all() and (first <= done).all()
    assert all(x == 0 for x in req.out_left) and all(x == 0 for x in req.prompt_left)
    for rep in reps or []:
        assert rep.idle and rep.kv_used == 0 and rep.sum_ctx == 0 and rep.n_dec == 0 and rep.outstanding == 0


def test_one_request_alone_takes_its_reference_latency() -> None:
    """The closed-form reference latency is exactly what the engine does for a lone request (PP too)."""
    for sm in (_llama8b(), _llama8b(2, 2)):
        for isl, osl in ((100, 1), (1000, 200), (20000, 50)):
            req, _ = run_stage(sm, 1, np.array([0.0]), np.array([isl]), np.array([osl]))
            ref = reference_latency(sm.dep, np.array([isl]), np.array([osl]), router_overhead_s=0.0)
            overhead = engine_overhead()
            assert req.t_done[0] == pytest.approx(float(ref[0]) - overhead, rel=1e-9)


def engine_overhead() -> float:
    from cascadia_sky.constants import VLLM_REQUEST_OVERHEAD_MS

    return VLLM_REQUEST_OVERHEAD_MS * 1e-3


@pytest.mark.parametrize("rho", [0.3, 0.7])
def test_one_at_a_time_replica_is_an_md1_queue(rho: float) -> None:
    """max_num_seqs = 1 and identical requests: an M/D/1 queue, mean wait rho D / (2 (1 - rho))
    (Pollaczek-Khinchine)."""
    sm = dataclasses.replace(_llama8b(), max_seqs=1)
    service, _ = run_stage(sm, 1, np.array([0.0]), np.array([500]), np.array([100]))
    d = service.t_done[0]
    n = 20000
    req, stats = run_stage(sm, 1, _poisson(rho / d, n), np.full(n, 500), np.full(n, 100))
    wait = np.array(req.t_admit) - np.array(req.t_arrive)
    assert wait.mean() == pytest.approx(rho * d / (2 * (1 - rho)), rel=0.08)
    assert np.allclose(np.array(req.t_done) - np.array(req.t_admit), d)       # deterministic service
    assert stats[0].busy_s / (req.t_done[-1] - req.t_arrive[0]) == pytest.approx(rho, rel=0.05)


def test_low_load_batching_costs_little() -> None:
    """At low load with batching, latency stays near the lone-request latency (M/D/1-like: waits are short)."""
    sm = _llama8b()
    alone, _ = run_stage(sm, 1, np.array([0.0]), np.array([500]), np.array([100]))
    n = 3000
    req, _ = run_stage(sm, 1, _poisson(0.5 / alone.t_done[0], n), np.full(n, 500), np.full(n, 100))
    lat = np.array(req.t_done) - np.array(req.t_arrive)
    assert alone.t_done[0] <= lat.mean() < 1.15 * alone.t_done[0]


def test_decode_of_a_full_batch_runs_at_the_step_time() -> None:
    """C clients with long outputs decode together: TPOT is the step time of a batch of C at that context."""
    sm = _llama8b()
    c, isl, osl = 32, 200, 2000
    req = run_closed_loop(sm, c, c, isl, osl, 0.0)
    first, done = np.array(req.t_first), np.array(req.t_done)
    tpot = (done - first) / (osl - 1)
    expected = float(sm.step_time(c, 0.0, isl + osl / 2.0, 0.0, c))
    assert np.median(tpot) == pytest.approx(expected, rel=0.02)


def test_bulk_decode_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Advancing runs of decode iterations in closed form gives the same times as one iteration at a time."""
    sm = _llama8b()
    rng = np.random.default_rng(3)
    n = 600
    arrivals = _poisson(8.0, n)
    isl, osl = rng.integers(50, 3000, n), rng.integers(1, 800, n)
    fast, _ = run_stage(sm, 2, arrivals, isl, osl)
    monkeypatch.setattr(engine.Replica, "_bulk_decode", lambda self, t, done: self._iteration(done))
    slow, _ = run_stage(sm, 2, arrivals, isl, osl)
    assert np.allclose(fast.t_done, slow.t_done, rtol=1e-9)
    assert np.allclose(fast.t_first, slow.t_first, rtol=1e-9)
    assert fast.replica == slow.replica


def test_kv_pressure_preempts_and_still_conserves() -> None:
    """A small KV cache: requests wait, the latest admitted are preempted (recompute), nothing is lost."""
    sm = _llama8b()
    small = dataclasses.replace(sm, kv_avail_bytes=20_000 * (sm.kv_bytes_full + sm.kv_bytes_window))
    assert kv_capacity_tokens(small) == 20_000
    n = 400
    req = StageRequests(np.full(n, 1000), np.full(n, 600))
    rep = Replica(small, req)
    peak = 0
    for r, t in enumerate(_poisson(20.0, n).tolist()):
        rep.run(t)
        peak = max(peak, rep.kv_used)
        rep.enqueue(r, t)
    rep.run(float("inf"))
    _check_conserved(req, [rep])
    assert rep.preemptions > 0 and sum(req.preemptions) == rep.preemptions
    assert peak <= 20_000
    assert rep.max_waiting > 10


def test_sequence_cap_limits_the_batch() -> None:
    sm = dataclasses.replace(_llama8b(), max_seqs=4)
    n = 200
    req = StageRequests(np.full(n, 300), np.full(n, 100))
    rep = Replica(sm, req)
    for r in range(n):
        rep.enqueue(r, 0.0)
    running = []
    while not rep.idle:
        running.append(rep.n_dec + len(rep.prefill))
        rep.run(rep.t_free)
    assert max(running) == 4
    _check_conserved(req, [rep])


def test_least_outstanding_balancing_rotates_ties() -> None:
    """Spaced-out identical requests find every replica idle: ties rotate, so they alternate."""
    sm = _llama8b()
    n = 9
    req, stats = run_stage(sm, 3, np.arange(n) * 100.0, np.full(n, 100), np.full(n, 10))
    assert req.replica == [0, 1, 2] * 3
    # a burst goes to the replicas with the fewest outstanding requests: evenly spread
    req, _ = run_stage(sm, 3, np.zeros(30), np.full(30, 100), np.full(30, 10))
    assert sorted(np.bincount(req.replica).tolist()) == [10, 10, 10]
    assert len(stats) == 3


def test_over_capacity_queue_grows_without_bound() -> None:
    """Above capacity mu the queue wait grows without bound, at d(wait)/dt = lambda / mu - 1 (the backlog
    (lambda - mu) t is served at mu); below capacity it does not grow."""
    sm = dataclasses.replace(_llama8b(), max_seqs=8)
    alone, _ = run_stage(sm, 1, np.array([0.0]), np.array([400]), np.array([300]))
    full = run_closed_loop(sm, 8, 200, 400, 300, 0.0)
    capacity = 200 / (full.t_done[-1])           # requests per second with the batch full
    n = 3000
    for load, grows in ((0.6, False), (1.5, True)):
        req, _ = run_stage(sm, 1, _poisson(load * capacity, n), np.full(n, 400), np.full(n, 300))
        arrive = np.array(req.t_arrive)
        wait = np.array(req.t_admit) - arrive
        slope = np.polyfit(arrive, wait, 1)[0]
        q = n // 4
        if grows:
            assert slope == pytest.approx(load - 1.0, rel=0.2)
            assert wait[-q:].mean() > 4 * wait[:q].mean() > 40 * alone.t_done[0]
        else:
            assert abs(slope) < 0.01 and wait[-q:].mean() < alone.t_done[0]
