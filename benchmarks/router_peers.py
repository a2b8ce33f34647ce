"""The race: our router against peer gateways in front of the same fast fake engine, one worker each.

Set-up, all on 127.0.0.1: one fake OpenAI-compatible engine (router_common.py: raw asyncio, instant 2-token chat
answers with logprobs) and, in front of it, each of
- `cascadia-1stage`: our router, one stage (python -m router, one uvicorn worker, API key on);
- `cascadia-2stage`: our router, a two-stage cascade whose first stage accepts (the fake's logprob -0.1 >= -5), so
  each request is one engine call plus scoring plus the cascade's bookkeeping;
- `litellm`: the LiteLLM proxy (`litellm --num_workers 1`, master key on, an `openai/` model with the fake as
  api_base);
- `vllm-router`: the Rust load balancer from PyPI (`--worker-urls` the fake; TOKIO_WORKER_THREADS=1);
- `fastapi-passthrough` (a reference, not a peer): the floor of our stack, a FastAPI route that posts the body to
  the engine with aiohttp and returns its bytes (uvicorn, uvloop, httptools, as our router), nothing else.
Peers are installed into a throwaway venv under .cache/peers-venv (never project dependencies); a peer that
cannot be installed or started is reported with the reason and left out of the ratios.

Each gateway process is pinned to CPU 1 and the client and the fake engine to CPU 0 (when the machine has 2+ CPUs),
so "one worker" means one core for every gateway, whatever threads it starts. Other load on the machine is not ours to
control: the rounds interleave the gateways (rotated order, direct calls in every round) so drift hits all alike.
Per round and gateway: a warm-up, then
1. latency: N sequential non-streamed chat requests on one keep-alive connection; added = gateway - direct (the
   same round's direct calls) at p50 and p99;
2. throughput: closed loops of C keep-alive connections for a fixed time at each C in --concurrency; the gateway's
   figure is the highest req/s among the runs with 0 errors (non-200 or a dropped connection).
Figures are medians over rounds; ratios are to the best peer (added latency: ours / best, lower is better;
req/s: ours / best, higher is better), and req/s also to the best Python peer. The client is Python, so very fast
gateways may be client-bound: the direct calls' req/s is printed as that ceiling. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from router_common import ROOT, Conn, pct, start_fake, stop, wait_http  # type: ignore[import-not-found]

from cascadia_sky.engines import free_port

PEERS_VENV = ROOT / ".cache" / "peers-venv"
PEER_PACKAGES = {"litellm": "litellm[proxy]", "vllm-router": "vllm-router"}
PYTHON_PEERS = ("litellm",)  # the goal compares req/s per worker with the best Python peer
INSTALL_TIMEOUT_S = 900
START_TIMEOUT_S = 120
GATEWAY_CPU = 1
CLIENT_CPU = 0


def _pin(cpu: int) -> Callable[[], None] | None:
    if len(os.sched_getaffinity(0)) < 2:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def ensure_peers(log: Callable[[str], None]) -> dict[str, str]:
    """Install each peer (separately) into the throwaway venv; return {peer: version or 'unavailable: why'}."""
    py = PEERS_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    out = {}
    for name, spec in PEER_PACKAGES.items():
        dist = spec.split("[")[0]
        shown = subprocess.run([str(py), "-m", "pip", "show", dist], capture_output=True, text=True)
        if shown.returncode != 0:
            log(f"installing {spec} into {PEERS_VENV} (PyPI) ...")
            try:
                done = subprocess.run([str(py), "-m", "pip", "install", "-q", spec], capture_output=True, text=True,
                                      timeout=INSTALL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                out[name] = f"unavailable: pip install {spec} took over {INSTALL_TIMEOUT_S} s"
                continue
            if done.returncode != 0:
                out[name] = f"unavailable: pip install {spec} failed: {done.stderr.strip().splitlines()[-1:]}"
                continue
            shown = subprocess.run([str(py), "-m", "pip", "show", dist], capture_output=True, text=True)
        version = next((ln.split(":", 1)[1].strip() for ln in shown.stdout.splitlines()
                        if ln.startswith("Version:")), "?")
        out[name] = version
    return out


@dataclass
class Gateway:
    name: str
    ours: bool
    port: int
    model: str
    headers: str = ""                      # extra raw request header lines
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    error: str | None = None
    log_path: Path | None = None

    def start(self, workdir: Path) -> None:
        if not self.argv:
            return  # the direct calls
        self.log_path = workdir / f"{self.name}.log"
        with open(self.log_path, "w") as logf:
            self.proc = subprocess.Popen(self.argv, cwd=workdir, env={**os.environ, **self.env}, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_pin(GATEWAY_CPU))

    async def ready(self) -> None:
        """Wait until a chat request through the gateway answers 200."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                break
            conn = Conn("127.0.0.1", self.port)
            try:
                status, body = await conn.post("/v1/chat/completions", body_for(self.model), self.headers)
                if status == 200:
                    return
                last = f"HTTP {status}: {body[:200]!r}"
            except OSError as exc:
                last = f"{type(exc).__name__}"
            finally:
                conn.close()
            await asyncio.sleep(0.5)
        tail = self.log_path.read_text()[-600:] if self.log_path and self.log_path.exists() else ""
        raise RuntimeError(f"{self.name} did not answer within {START_TIMEOUT_S} s ({last}); log tail: {tail}")


def body_for(model: str) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello"}],
                       "max_tokens": 2}).encode()


async def latencies(gw: Gateway, n: int) -> list[float]:
    conn = Conn("127.0.0.1", gw.port)
    body = body_for(gw.model)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status, _ = await conn.post("/v1/chat/completions", body, gw.headers)
            out.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"{gw.name}: HTTP {status} during the latency run")
    finally:
        conn.close()
    return out


async def throughput(gw: Gateway, conns: int, seconds: float) -> tuple[float, int]:
    """Closed loop: `conns` keep-alive connections for `seconds`; (req/s, errors)."""
    body = body_for(gw.model)
    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        conn = Conn("127.0.0.1", gw.port)
        try:
            while time.perf_counter() < stop_at:
                try:
                    status, _ = await conn.post("/v1/chat/completions", body, gw.headers)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    conn.close()
                    continue
                if status == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return done / (time.perf_counter() - t0), errors


def passthrough(port: int, upstream: str) -> None:
    """The reference entrant: the same web stack as our router with no cascade, validation, auth or stats."""
    from contextlib import asynccontextmanager

    import aiohttp
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1024)) as session:
            app.state.session = session
            yield

    app = FastAPI(lifespan=lifespan)

    async def chat(request: Request) -> Response:
        async with request.app.state.session.post(upstream + "/v1/chat/completions", data=await request.body(),
                                                  headers={"content-type": "application/json"}) as r:
            return Response(await r.read(), status_code=r.status, media_type="application/json")

    chat.__annotations__ = {"request": Request, "return": Response}  # resolved here, not as strings (PEP 563)
    app.post("/v1/chat/completions")(chat)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _gateways(fake_port: int, workdir: Path, peers: dict[str, str]) -> list[Gateway]:
    key = "sk-bench-" + secrets.token_hex(8)
    auth = f"authorization: Bearer {key}\r\n"
    fake = f"http://127.0.0.1:{fake_port}"
    out = [Gateway("direct", False, fake_port, "m")]
    for name, stages in (("cascadia-1stage", [("only", None)]), ("cascadia-2stage", [("small", -5.0), ("big", None)])):
        cfg = {"name": "bench", "early_decision": None,
               "stages": [{"name": n, "served_model_name": "m", "endpoints": [fake], "threshold": t}
                          for n, t in stages]}
        path = workdir / f"{name}.json"
        path.write_text(json.dumps(cfg))
        port = free_port()
        out.append(Gateway(name, True, port, "bench", auth,
                           [sys.executable, "-m", "router", "--config", str(path), "--port", str(port)],
                           {"PYTHONPATH": str(ROOT), "CASCADIA_ROUTER_API_KEYS": key}))
    port = free_port()
    out.append(Gateway("fastapi-passthrough", False, port, "m", "",
                       [sys.executable, __file__, "--passthrough", str(port), fake], {"PYTHONPATH": str(ROOT)}))
    bin_dir = PEERS_VENV / "bin"
    if not peers.get("litellm", "unavailable").startswith("unavailable"):
        port = free_port()
        (workdir / "litellm.yaml").write_text(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/m\n"
            f"      api_base: {fake}/v1\n      api_key: unused\n")
        out.append(Gateway("litellm", False, port, "bench", auth,
                           [str(bin_dir / "litellm"), "--config", "litellm.yaml", "--host", "127.0.0.1", "--port",
                            str(port), "--num_workers", "1"],
                           {"LITELLM_MASTER_KEY": key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                            "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}))
    if not peers.get("vllm-router", "unavailable").startswith("unavailable"):
        port = free_port()
        out.append(Gateway("vllm-router", False, port, "m", "",
                           [str(bin_dir / "vllm-router"), "--worker-urls", fake, "--host", "127.0.0.1", "--port",
                            str(port), "--policy", "round_robin", "--log-level", "warning"],
                           {"TOKIO_WORKER_THREADS": "1"}))
    return out


async def race(gws: list[Gateway], rounds: int, n_lat: int, levels: list[int], seconds: float,
               log: Callable[[str], None]) -> dict[str, dict[str, list[float]]]:
    per: dict[str, dict[str, list[float]]] = {g.name: {"p50": [], "p99": [], "rps": []} for g in gws}
    for r in range(rounds):
        order = gws[r % len(gws):] + gws[:r % len(gws)]
        direct: tuple[float, float] | None = None
        lat: dict[str, tuple[float, float]] = {}
        for gw in order:
            await latencies(gw, min(100, n_lat))  # warm-up
            xs = await latencies(gw, n_lat)
            lat[gw.name] = (pct(xs, 0.5), pct(xs, 0.99))
            best = 0.0
            for c in levels:
                rps, errors = await throughput(gw, c, seconds)
                log(f"round {r + 1} {gw.name}: {c} conns -> {rps:,.0f} req/s, {errors} errors")
                if errors == 0:
                    best = max(best, rps)
            per[gw.name]["rps"].append(best)
        direct = lat["direct"]
        for name, (p50, p99) in lat.items():
            per[name]["p50"].append(p50 - direct[0])
            per[name]["p99"].append(p99 - direct[1])
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--latency-requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--seconds", type=float, default=2.0, help="length of each throughput run")
    ap.add_argument("--passthrough", nargs=2, metavar=("PORT", "UPSTREAM"), help=argparse.SUPPRESS)  # internal
    a = ap.parse_args()
    if a.passthrough:
        passthrough(int(a.passthrough[0]), a.passthrough[1])
        return
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    pin = _pin(CLIENT_CPU)
    if pin:
        pin()
    peers = ensure_peers(log)
    for name, v in peers.items():
        log(f"peer {name}: {v}")
    fake_port = free_port()
    fake = start_fake(fake_port)
    procs = [fake]
    results: dict[str, dict[str, float | str]] = {}
    try:
        wait_http(f"http://127.0.0.1:{fake_port}/v1/models")
        with tempfile.TemporaryDirectory() as tmp:
            gws = _gateways(fake_port, Path(tmp), peers)
            for gw in gws:
                gw.start(Path(tmp))
                if gw.proc:
                    procs.append(gw.proc)
            live = []
            for gw in gws:
                try:
                    asyncio.run(gw.ready())
                    live.append(gw)
                except RuntimeError as exc:
                    gw.error = str(exc)
                    log(f"left out: {exc}")
            per = asyncio.run(race(live, a.rounds, a.latency_requests, a.concurrency, a.seconds, log))
        for gw in gws:
            if gw.error:
                results[gw.name] = {"error": gw.error[:300]}
                continue
            m = per[gw.name]
            results[gw.name] = {"added_p50_ms": statistics.median(m["p50"]) * 1e3,
                                "added_p99_ms": statistics.median(m["p99"]) * 1e3,
                                "max_rps_0_errors": statistics.median(m["rps"])}
    finally:
        stop(procs)
    for name, v in peers.items():
        if v.startswith("unavailable"):
            results[name] = {"error": v}
    peer_ok = {n: r for n, r in results.items() if n in PEER_PACKAGES and "error" not in r}
    if peer_ok:
        best_p50 = min(r["added_p50_ms"] for r in peer_ok.values())
        best_p99 = min(r["added_p99_ms"] for r in peer_ok.values())
        best_rps = max(r["max_rps_0_errors"] for r in peer_ok.values())
        for name, r in results.items():
            if "error" in r or name == "direct":
                continue
            r["p50_vs_best_peer"] = r["added_p50_ms"] / best_p50 if best_p50 > 0 else float("nan")
            r["p99_vs_best_peer"] = r["added_p99_ms"] / best_p99 if best_p99 > 0 else float("nan")
            r["rps_vs_best_peer"] = r["max_rps_0_errors"] / best_rps if best_rps > 0 else float("nan")
    py_ok = [r for n, r in peer_ok.items() if n in PYTHON_PEERS]
    if py_ok:
        best_py = max(r["max_rps_0_errors"] for r in py_ok)
        for name, r in results.items():
            if "error" not in r and name != "direct" and best_py > 0:
                r["rps_vs_best_python_peer"] = r["max_rps_0_errors"] / best_py
    print(f"{'gateway':<16} {'added p50 ms':>12} {'added p99 ms':>12} {'req/s 0 err':>12} {'p50/best':>9} "
          f"{'p99/best':>9} {'rps/best':>9} {'rps/py':>7}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<16} {r['error']}")
            continue
        print(f"{name:<16} {r['added_p50_ms']:>12.3f} {r['added_p99_ms']:>12.3f} {r['max_rps_0_errors']:>12,.0f} "
              + " ".join(f"{r[k]:>9.2f}" if k in r else f"{'':>9}"
                         for k in ("p50_vs_best_peer", "p99_vs_best_peer", "rps_vs_best_peer"))
              + (f" {r['rps_vs_best_python_peer']:>7.1f}" if "rps_vs_best_python_peer" in r else ""))
    print(json.dumps({"benchmark": "router_peers", "rounds": a.rounds, "latency_requests": a.latency_requests,
                      "concurrency": a.concurrency, "seconds": a.seconds, "peers": peers, "results": results}))


if __name__ == "__main__":
    main()
