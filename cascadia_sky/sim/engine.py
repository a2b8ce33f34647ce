"""One stage's replicas as vLLM-like continuous-batching engines, event-driven, with the performance model's steps.

A replica runs engine *iterations*. Each iteration (vLLM's scheduler, V1 with chunked prefill) is decided when the
previous one ends:

1. every running request that is decoding gets one token (decodes are scheduled first);
2. running requests still prefilling get the next chunk of their prompt, as far as the token budget
   (`max_num_batched_tokens`) allows;
3. if nothing was preempted, waiting requests are admitted first come first served while the budget, the
   sequence cap (`max_num_seqs`) and the KV cache allow (a prompt needs KV room for its first chunk only);
4. when the KV cache cannot hold the new tokens of a running request, the most recently admitted running request is
   preempted (recompute: its KV is freed and it goes back to the front of the queue, to prefill its prompt and the
   tokens it generated so far again).

The iteration lasts `StepModel.step_time(n_dec, n_pf, c_dec, c_pf, n_out)` (`perf/step.py`): the same equation the
planner's estimates rest on, for this model x GPU x TP x PP. A prompt's last chunk samples its first token; a
request leaves after its last output token. With PP, the replica is one engine whose iteration is one pass of a
microbatch through all stages with pp microbatches in flight: the iteration of a batch of n tokens takes
`step_time(n / pp)` and its budget is pp x `max_num_batched_tokens` (as `perf/serving.py` assumes). One request's
chunk sits in one microbatch and crosses every stage: when a prompt's last chunk outweighs an even share of the
iteration's prefill tokens (a lone prompt at low load), its first token, and so the rest of the request, comes no
earlier than the whole model's time for that chunk beside the decodes (`StageRequests.lag`, added to the request's
times when `run_stage` ends; the iteration's pace, and so throughput, is unchanged). Without it the simulator
pipelined a lone 2,048-token prompt as if split over the microbatches, and paths through PP=2 stages at 15-21 %
load came out 9-15 % faster than the performance model's, which prices a chunk as vLLM runs it.
(`run_closed_loop`, which replays the measured benchmarks, all PP=1, does not apply it.)

Speed: between events nothing changes but the context lengths, so runs of pure decode iterations (no prefill,
no admission possible) are advanced in bulk: k iterations until the next completion or the KV cache fills, with
step times linear in the context (exact without sliding-window layers) and closed-form start times. Per-request
state lives in Python lists (cheaper per element than numpy in this loop); decoders finish at a known iteration
count, kept in a heap.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from cascadia_sky.perf.step import StepModel

_NAN = math.nan


def kv_capacity_tokens(sm: StepModel) -> int:
    """Tokens of context the replica's KV cache holds (as `memory_fit` counts them)."""
    per_token = sm.kv_bytes_full + sm.kv_bytes_window
    return int(max(sm.kv_avail_bytes, 0.0) / per_token) if per_token else 1 << 40


class StageRequests:
    """Per-request state of the requests one stage serves (index = local request id)."""

    def __init__(self, input_tokens: np.ndarray, output_tokens: np.ndarray) -> None:
        n = len(input_tokens)
        self.isl: list[int] = [int(x) for x in np.asarray(input_tokens).tolist()]
        self.osl: list[int] = [max(int(x), 1) for x in np.asarray(output_tokens).tolist()]
        self.prompt_left: list[int] = list(self.isl)   # tokens still to prefill (prompt, or recompute)
        self.out_left: list[int] = list(self.osl)      # tokens still to sample
        self.ctx: list[int] = [0] * n                  # tokens in the KV cache (prefillers; decoders: see Replica)
        self.t_arrive: list[float] = [_NAN] * n
        self.t_admit: list[float] = [_NAN] * n         # first admission to the running batch
        self.t_first: list[float] = [_NAN] * n         # first token sampled
        self.t_done: list[float] = [_NAN] * n
        self.replica: list[int] = [-1] * n
        self.preemptions: list[int] = [0] * n
        self.seq: list[int] = [-1] * n                 # admission number while running, else -1
        self.d_join: list[int] = [0] * n               # decoders: the replica's decode count when they joined
        self.ctx_join: list[int] = [0] * n
        self.out_join: list[int] = [0] * n
        self.lag: list[float] = [0.0] * n              # PP: a lone prompt's last chunk crossing every stage

    @property
    def n(self) -> int:
        return len(self.isl)


class Replica:
    """One engine (TP x PP GPUs) serving requests of a `StageRequests`; see the module docstring."""

    def __init__(self, sm: StepModel, req: StageRequests, index: int = 0) -> None:
        self.sm = sm
        self.req = req
        self.index = index
        self.pp = sm.dep.pp
        self.budget = sm.budget_tokens * self.pp
        self.max_seqs = sm.max_seqs
        self.cap = kv_capacity_tokens(sm)
        self.t_free = 0.0                      # when the next iteration may start
        self.waiting: deque[int] = deque()
        self.prefill: list[int] = []           # running requests still prefilling, in admission order
        self.dec_heap: list[tuple[int, int, int]] = []   # (finish at decode count, seq, request)
        self.run_heap: list[tuple[int, int]] = []        # (-seq, request): preemption victims, latest first
        self.n_dec = 0
        self.dec_count = 0                     # decode iterations run so far (D)
        self.sum_ctx = 0                       # context tokens of the decoders
        self.kv_used = 0
        self.next_seq = 0
        self.outstanding = 0                   # enqueued and not finished (the router's balancing signal)
        self.busy_s = 0.0
        self.iterations = 0
        self.preemptions = 0
        self.max_waiting = 0

    # --- arrivals ----------------------------------------------------------------------------
    def enqueue(self, r: int, t: float) -> None:
        """Request r reaches this engine at time t (every earlier iteration must already be decided)."""
        req = self.req
        req.t_arrive[r] = t
        req.replica[r] = self.index
        if self.idle:
            self.t_free = max(self.t_free, t)
        self.waiting.append(r)
        self.outstanding += 1
        self.max_waiting = max(self.max_waiting, len(self.waiting))

    @property
    def idle(self) -> bool:
        return not self.n_dec and not self.prefill and not self.waiting

    # --- running -----------------------------------------------------------------------------
    def run(self, t_limit: float, stop_on_done: bool = False) -> list[int]:
        """Run every iteration that starts at or before t_limit; return the requests finished.

        With stop_on_done, return right after the first iteration in which a request finishes (closed loops
        need to react to each completion).
        """
        done: list[int] = []
        while not self.idle and self.t_free <= t_limit:
            if self.n_dec and not self.prefill and not self._admissible():
                self._bulk_decode(t_limit, done)
            else:
                self._iteration(done)
            if stop_on_done and done:
                break
        return done

    def _admissible(self) -> bool:
        """Could the next iteration admit a waiting request? (Decodes take their tokens first.)"""
        if not self.waiting or self.n_dec >= self.max_seqs:
            return False
        first = self.req.prompt_left[self.waiting[0]]
        room = self.budget - self.n_dec
        return room > 0 and self.kv_used + self.n_dec + min(first, room) <= self.cap

    def _bulk_decode(self, t_limit: float, done: list[int]) -> None:
        """Pure decode iterations until the next completion, a full KV cache or t_limit, in O(1)."""
        n = self.n_dec
        heap, seq = self.dec_heap, self.req.seq
        while heap and seq[heap[0][2]] != heap[0][1]:
            heapq.heappop(heap)                       # stale: preempted
        k = heap[0][0] - self.dec_count
        k_kv = (self.cap - self.kv_used) // n
        if k_kv < 1:
            self._iteration(done)                     # the next token preempts someone
            return
        k = min(k, k_kv)
        c0 = self.sum_ctx / n + 1.0
        b = n / self.pp
        if k > 1:
            t = self.sm.step_time(b, 0.0, np.array([c0, c0 + k - 1]), 0.0, b)
            a, slope = float(t[0]), float(t[1] - t[0]) / (k - 1)
        else:
            a, slope = float(self.sm.step_time(b, 0.0, c0, 0.0, b)), 0.0
        m = k if t_limit == math.inf else min(k, _starts_before(a, slope, t_limit - self.t_free))
        if m < 1:
            return
        elapsed = m * a + slope * m * (m - 1) / 2.0
        self.t_free += elapsed
        self.busy_s += elapsed
        self.iterations += m
        self.dec_count += m
        self.sum_ctx += n * m
        self.kv_used += n * m
        if m == k:
            self._finish_decoders(done)

    def _iteration(self, done: list[int]) -> None:
        """Decide, time and apply one iteration (see the module docstring)."""
        req = self.req
        prompt_left, ctx = req.prompt_left, req.ctx
        preempted = False
        while self.n_dec and self.kv_used + self.n_dec > self.cap:
            self._preempt_latest()
            preempted = True
        scheduled = 0                                 # prefill tokens scheduled so far
        chunks: list[tuple[int, int]] = []
        for r in list(self.prefill):
            budget_left = self.budget - self.n_dec - scheduled
            if budget_left <= 0:
                break
            if req.seq[r] < 0:
                continue                              # preempted in this iteration
            x = min(prompt_left[r], budget_left)
            while req.seq[r] >= 0 and self.kv_used + self.n_dec + scheduled + x > self.cap:
                self._preempt_latest()                # the latest admitted: r itself or one admitted after it
                preempted = True
            if req.seq[r] < 0:
                break
            chunks.append((r, x))
            scheduled += x
        if not preempted:
            waiting = self.waiting
            while waiting and self.n_dec + len(self.prefill) < self.max_seqs:
                budget_left = self.budget - self.n_dec - scheduled
                if budget_left <= 0:
                    break
                r = waiting[0]
                x = min(prompt_left[r], budget_left)
                if self.kv_used + self.n_dec + scheduled + x > self.cap:
                    break
                waiting.popleft()
                self._admit(r)
                chunks.append((r, x))
                scheduled += x
        n_dec = self.n_dec
        n_pf = scheduled
        if not n_dec and not n_pf:
            if self.waiting and not self.prefill:
                raise RuntimeError("simulator: a waiting request cannot fit an empty KV cache (clip its length)")
            return
        completing = sum(1 for r, x in chunks if x == prompt_left[r])
        c_dec = self.sum_ctx / n_dec + 1.0 if n_dec else 0.0
        c_pf = sum(x * (ctx[r] + x / 2.0) for r, x in chunks) / n_pf if n_pf else 0.0
        pp = self.pp
        dt = float(self.sm.step_time(n_dec / pp, n_pf / pp, c_dec, c_pf, (n_dec + completing) / pp))
        self.t_free += dt
        self.busy_s += dt
        self.iterations += 1
        t_end = self.t_free
        if pp > 1:     # a last chunk heavier than an even microbatch share crosses every stage at its own pace
            for r, x in chunks:
                if x == prompt_left[r] and x > n_pf / pp:
                    floor = float(self.sm.step_time(n_dec / pp, x, c_dec, ctx[r] + x / 2.0, n_dec / pp + 1.0))
                    req.lag[r] = max(req.lag[r], floor - dt)
        if n_dec:
            self.dec_count += 1
            self.sum_ctx += n_dec
            self.kv_used += n_dec
            self._finish_decoders(done)
        for r, x in chunks:
            prompt_left[r] -= x
            ctx[r] += x
            self.kv_used += x
            if prompt_left[r]:
                continue
            self.prefill.remove(r)
            if req.t_first[r] != req.t_first[r]:      # NaN: first token of this request
                req.t_first[r] = t_end
            req.out_left[r] -= 1
            if req.out_left[r] <= 0:
                self._leave(r, ctx[r], t_end, done)
            else:
                self._start_decoding(r)

    # --- bookkeeping -------------------------------------------------------------------------
    def _admit(self, r: int) -> None:
        req = self.req
        req.seq[r] = self.next_seq
        heapq.heappush(self.run_heap, (-self.next_seq, r))
        self.next_seq += 1
        if req.t_admit[r] != req.t_admit[r]:
            req.t_admit[r] = self.t_free
        self.prefill.append(r)

    def _start_decoding(self, r: int) -> None:
        req = self.req
        req.d_join[r] = self.dec_count
        req.ctx_join[r] = req.ctx[r]
        req.out_join[r] = req.out_left[r]
        self.sum_ctx += req.ctx[r]
        self.n_dec += 1
        heapq.heappush(self.dec_heap, (self.dec_count + req.out_left[r], req.seq[r], r))

    def _finish_decoders(self, done: list[int]) -> None:
        heap, req = self.dec_heap, self.req
        while heap and heap[0][0] <= self.dec_count:
            _, s, r = heapq.heappop(heap)
            if req.seq[r] != s:
                continue
            c = req.ctx_join[r] + req.out_join[r]
            self.sum_ctx -= c
            self.n_dec -= 1
            req.out_left[r] = 0
            self._leave(r, c, self.t_free, done)

    def _leave(self, r: int, ctx: int, t: float, done: list[int]) -> None:
        req = self.req
        self.kv_used -= ctx
        req.ctx[r] = 0
        req.seq[r] = -1
        req.t_done[r] = t
        self.outstanding -= 1
        done.append(r)

    def _preempt_latest(self) -> int:
        """Preempt the most recently admitted running request (vLLM's recompute preemption)."""
        req = self.req
        while True:
            neg, r = heapq.heappop(self.run_heap)
            if req.seq[r] == -neg:
                break
        if r in self.prefill:
            self.prefill.remove(r)
            freed = req.ctx[r]
            req.prompt_left[r] += freed
        else:
            steps = self.dec_count - req.d_join[r]
            freed = req.ctx_join[r] + steps
            req.out_left[r] = req.out_join[r] - steps
            req.prompt_left[r] = freed + 1            # prompt and generated tokens, the last one not yet cached
            self.sum_ctx -= freed
            self.n_dec -= 1
        self.kv_used -= freed
        req.ctx[r] = 0
        req.seq[r] = -1
        req.preemptions[r] += 1
        self.preemptions += 1
        self.waiting.appendleft(r)
        return r


def _starts_before(a: float, slope: float, horizon: float) -> int:
    """How many iterations j = 0, 1, ... start within `horizon`: j * a + slope * j (j - 1) / 2 <= horizon."""
    if horizon < 0:
        return 0
    if slope <= 1e-15 * a:
        j = int(horizon / a) if a > 0 else 1 << 40
    else:
        h = a - slope / 2.0
        j = int((-h + math.sqrt(h * h + 2.0 * slope * horizon)) / slope)
    while j > 0 and j * a + slope * j * (j - 1) / 2.0 > horizon:
        j -= 1
    while (j + 1) * a + slope * (j + 1) * j / 2.0 <= horizon:
        j += 1
    return j + 1


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica did: busy time, iterations, preemptions, longest queue."""

    busy_s: float
    iterations: int
    preemptions: int
    max_waiting: int


def run_stage(sm: StepModel, replicas: int, arrival_s: np.ndarray, input_tokens: np.ndarray,
              output_tokens: np.ndarray) -> tuple[StageRequests, list[ReplicaStats]]:
    """Open loop: requests reach the stage at `arrival_s` (sorted) and go to the replica with the fewest outstanding
    requests at that moment (ties rotate), as the router balances; run until every request has finished."""
    req = StageRequests(input_tokens, output_tokens)
    reps = [Replica(sm, req, i) for i in range(replicas)]
    rotate = 0
    for r, t in enumerate(arrival_s.tolist()):
        best, best_load = 0, math.inf
        for k in range(replicas):
            i = (rotate + k) % replicas
            rep = reps[i]
            if not rep.idle and rep.t_free <= t:
                rep.run(t)
            if rep.outstanding < best_load:
                best, best_load = i, rep.outstanding
        reps[best].enqueue(r, t)
        rotate = (best + 1) % replicas
    for rep in reps:
        rep.run(math.inf)
    for r, lag in enumerate(req.lag):
        if lag > 0:
            req.t_first[r] += lag
            req.t_done[r] += lag
    return req, [ReplicaStats(rep.busy_s, rep.iterations, rep.preemptions, rep.max_waiting) for rep in reps]


def run_closed_loop(sm: StepModel, concurrency: int, requests: int, input_tokens: int, output_tokens: int,
                    overhead_s: float, desync_s: float = 0.0, seed: int = 0) -> StageRequests:
    """A closed-loop benchmark on one replica: `concurrency` clients start together, each sends its next request as
    soon as the previous one finished, `requests` in all; each request reaches the engine `overhead_s` after it is
    sent (HTTP, tokenisation). `t_arrive` of the result is the engine arrival; send times are `t_arrive - overhead_s`.

    With fixed lengths, clients that start together stay in lockstep in a simulation (groups of prompts arrive in
    the same iteration, forever); real clients drift apart. `desync_s` > 0 lets each client wait a uniform random
    share of it once, before its second request, so that later rounds arrive at independent phases.
    """
    req = StageRequests(np.full(requests, input_tokens), np.full(requests, output_tokens))
    rep = Replica(sm, req)
    rng = np.random.default_rng(seed)
    pending: list[tuple[float, int]] = []
    issued = 0
    for _ in range(min(concurrency, requests)):
        heapq.heappush(pending, (overhead_s, issued))
        issued += 1
    while pending or not rep.idle:
        t_next = pending[0][0] if pending else math.inf
        finished = rep.run(t_next, stop_on_done=True)
        if finished:
            for _r in finished:
                if issued < requests:
                    drift = float(rng.uniform(0.0, desync_s)) if desync_s > 0 and issued < 2 * concurrency else 0.0
                    heapq.heappush(pending, (rep.t_free + drift + overhead_s, issued))
                    issued += 1
            continue
        t, r = heapq.heappop(pending)
        rep.enqueue(r, t)
    return req
