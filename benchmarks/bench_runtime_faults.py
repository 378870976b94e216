"""Fault and load check of the policy server, on loopback only: latency, load, and the attacks of issue 14.

Everything here talks to 127.0.0.1 (and ``::1`` for the IPv6 row) and nothing else: every socket
goes through :func:`connect`, which refuses any non-loopback address. Every phase is bounded in
requests and in seconds, the whole run stops by itself after ``--max-seconds``, and all attack
sockets are closed before the next phase starts.

Rows (one tiny random-init ACT policy on the CPU, so the numbers are the server's, not the model's):

- p50/p99 of ``PolicyRuntime.predict_chunk`` in-process, and over the server with one keep-alive
  client for ``--sequential`` requests (loopback overhead = the difference of the p50s);
- ``--clients`` concurrent clients × ``--per-client`` requests: served fraction, p50/p99;
- slowloris: ``--attackers`` sockets that send ``POST /v1/predict HTTP/1.1`` and then one header
  line every ``--trickle-s`` (16 slots on the server), while an authenticated client opens a new
  connection per request: served fraction and latency of that client;
- idle sockets: as many sockets that connect and say nothing, same client;
- header flood: 16 connections each sending up to 6.4 MB of headers (100 lines of 64 KiB):
  process RSS before, peak and after;
- ``observation.state = 1e30`` (finite input, NaN output), a malformed ``Content-Length``, IPv6.

    python benchmarks/bench_runtime_faults.py                     # ours (asyncio server), ~1-2 min on 2 cores
    python benchmarks/bench_runtime_faults.py --stack uvicorn     # the same app on uvicorn (if installed)
    PYTHONPATH=<older checkout> python benchmarks/bench_runtime_faults.py   # any vla_dino with this server API
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from machine import machine_name  # benchmarks/machine.py (this script's folder)
from vla_dino.runtime.client import PolicyClient, PolicyServerError
from vla_dino.runtime.protocol import CONTENT_TYPE, encode_frame
from vla_dino.runtime.random_checkpoint import TINY_ACT, write_random_checkpoint
from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig

TOKEN = "bench-token-not-a-secret"
HOST = "127.0.0.1"


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """The only way this script opens a socket: loopback addresses only."""
    if not ipaddress.ip_address(address[0]).is_loopback:
        raise SystemExit(f"refusing to connect to {address[0]}: this script talks to loopback only")
    return socket.create_connection(address, timeout=timeout)


def rss_mb() -> float:
    """Resident set size of this process (server and clients share it) in MB, from /proc."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


# ---------------------------------------------------------------------- servers under test


class ConstantPredictor:
    """The runtime's spec and checks with no model: a fixed chunk, and NaN when the state is huge (like the ACT)."""

    def __init__(self, runtime: PolicyRuntime) -> None:
        self.spec = runtime.spec
        self._chunk = runtime.predict_chunk(runtime._synthetic_observation(runtime.spec.inputs, seed=0))

    def predict_chunk(self, observation: dict, task: str | None = None) -> np.ndarray:
        if np.abs(observation["observation.state"]).max() > 1e20:
            return np.full_like(self._chunk, np.nan)
        return self._chunk.copy()


class _UvicornHandle:
    """The same endpoints on uvicorn (raw ASGI app, same frame format and checks) for comparison."""

    def __init__(self, predictor: Any, max_connections: int, max_queue: int) -> None:
        import uvicorn  # optional: only for --stack uvicorn

        from vla_dino.runtime.guard import ActionGuard, UnsafeActionError
        from vla_dino.runtime.protocol import decode_frame, error_body
        from vla_dino.runtime.spec import ObservationError

        spec = predictor.spec
        guard = ActionGuard(spec.action_dim)
        worker = ThreadPoolExecutor(max_workers=1)
        in_flight = [0]

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            headers = dict(scope["headers"])

            async def reply(status: int, body: bytes, content_type: bytes = b"application/json") -> None:
                await send({"type": "http.response.start", "status": status,
                            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

            if headers.get(b"authorization") != f"Bearer {TOKEN}".encode():
                return await reply(401, error_body(401, "unauthorized", "token"))
            if scope["method"] == "GET":
                return await reply(200, b'{"status":"ok"}')
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            try:
                header, observation = decode_frame(body)
                spec.validate(observation)
            except ObservationError as error:
                return await reply(422, error_body(422, "invalid_observation", str(error)))
            except ValueError as error:
                return await reply(400, error_body(400, "bad_frame", str(error)))
            if in_flight[0] > max_queue:
                return await reply(503, error_body(503, "busy", "queue full"))
            in_flight[0] += 1
            try:
                chunk = await asyncio.get_running_loop().run_in_executor(worker, predictor.predict_chunk, observation, header.get("task"))
                chunk = guard.check(chunk)
            except UnsafeActionError as error:
                return await reply(500, error_body(500, "unsafe_action", str(error), reason=error.reason))
            except Exception as error:
                return await reply(500, error_body(500, "inference_failed", str(error)))
            finally:
                in_flight[0] -= 1
            await reply(200, encode_frame({"action": chunk}), CONTENT_TYPE.encode())

        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((HOST, 0))
        config = uvicorn.Config(app, limit_concurrency=max_connections, log_level="error", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        self.address = self._sock.getsockname()[:2]
        self.version = uvicorn.__version__

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def serve(stack: str, predictor: Any, max_connections: int, max_queue: int) -> Iterator[tuple[tuple[str, int], Any]]:
    """Start ``stack`` on 127.0.0.1 with a free port; yields (address, server object or None)."""
    if stack == "uvicorn":
        handle = _UvicornHandle(predictor, max_connections, max_queue)
        try:
            yield tuple(handle.address), None
        finally:
            handle.stop()
        return
    from vla_dino.runtime.server import PolicyServer, ServerConfig

    # Only fields every version of ServerConfig has, so an older checkout can be measured the same way.
    server = PolicyServer(predictor, ServerConfig(host=HOST, port=0, token=TOKEN, max_connections=max_connections, max_queue=max_queue))
    server.start()
    try:
        yield server.address, server
    finally:
        server.shutdown()


# ---------------------------------------------------------------------- clients and attackers


def timed_requests(address: tuple[str, int], observation: dict, count: int, seconds: float, new_connection: bool) -> dict:
    """``count`` predictions (or until ``seconds``): served fraction, latencies (ms), error codes."""
    latencies, codes = [], {}
    client = None if new_connection else PolicyClient(*address, token=TOKEN, timeout_s=5)
    end, done = time.perf_counter() + seconds, 0
    while done < count and time.perf_counter() < end:
        done += 1
        start = time.perf_counter()
        try:
            if new_connection:
                with PolicyClient(*address, token=TOKEN, timeout_s=3) as c:
                    c.predict_chunk(observation)
            else:
                client.predict_chunk(observation)
            latencies.append((time.perf_counter() - start) * 1e3)
        except PolicyServerError as error:
            codes[f"{error.status} {error.code}"] = codes.get(f"{error.status} {error.code}", 0) + 1
        except OSError as error:
            codes[type(error).__name__] = codes.get(type(error).__name__, 0) + 1
        if new_connection:
            time.sleep(0.02)  # a 50 Hz client, not a flood
    if client is not None:
        client.close()
    return {"requests": done, "served": len(latencies), "latencies": latencies, "codes": codes}


class Attackers:
    """``n`` sockets in one thread: ``mode="slowloris"`` trickles header lines, ``"idle"`` says nothing.
    A socket the server closes is reopened (an attacker would); stops at ``stop()`` or after ``limit_s``."""

    def __init__(self, address: tuple[str, int], n: int, mode: str, trickle_s: float, limit_s: float) -> None:
        self.address, self.n, self.mode, self.trickle_s, self.limit_s = address, n, mode, trickle_s, limit_s
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            sock = connect(self.address, timeout=1.0)
            if self.mode == "slowloris":
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\n")
            return sock
        except OSError:
            return None

    def _run(self) -> None:
        end = time.monotonic() + self.limit_s
        socks = [self._open() for _ in range(self.n)]
        next_send = time.monotonic() + self.trickle_s
        while not self._stop.is_set() and time.monotonic() < end:
            for i, sock in enumerate(socks):
                alive = sock is not None
                if alive:
                    try:  # closed by the server (b"") or answered (e.g. 408/503): start over
                        alive = not sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        alive = True
                    except OSError:
                        alive = False
                if not alive:
                    if sock is not None:
                        sock.close()
                    socks[i] = self._open()
                    self.reconnects += 1
            if self.mode == "slowloris" and time.monotonic() >= next_send:
                next_send += self.trickle_s
                for sock in socks:
                    if sock is not None:
                        with contextlib.suppress(OSError):
                            sock.sendall(b"X-Trickle: 1\r\n")
            self._stop.wait(0.05)
        for sock in socks:
            if sock is not None:
                sock.close()

    def __enter__(self) -> Attackers:
        self._thread.start()
        time.sleep(0.5)  # let every socket connect (and take its slot, on a server that gives them one)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def header_flood(address: tuple[str, int], connections: int = 16, lines: int = 100, line_bytes: int = 65536, limit_s: float = 20) -> dict:
    """``connections`` sockets each sending up to ``lines`` header lines of ``line_bytes``; RSS before/peak/after."""
    line = b"X-Flood: " + b"a" * (line_bytes - 11) + b"\r\n"
    before, peak, stop = rss_mb(), [rss_mb()], threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], rss_mb())

    def flood() -> str:
        try:
            with connect(address, timeout=2.0) as sock:
                sock.sendall(b"POST /v1/predict HTTP/1.1\r\n")
                end = time.monotonic() + limit_s
                for _ in range(lines):
                    if time.monotonic() > end:
                        break
                    sock.sendall(line)
                sock.sendall(b"\r\n")
                reply = sock.recv(200)
                return reply.split(b"\r\n", 1)[0].decode("latin-1", "replace") or "closed"
        except OSError as error:
            return f"closed ({type(error).__name__})"

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(connections) as pool:
        replies = list(pool.map(lambda _: flood(), range(connections)))
    time.sleep(0.3)
    stop.set()
    sampler.join()
    answers: dict[str, int] = {}
    for reply in replies:
        answers[reply] = answers.get(reply, 0) + 1
    return {"before": before, "peak": peak[0], "after": rss_mb(), "replies": answers}


def raw_request(address: tuple[str, int], data: bytes) -> str:
    try:
        with connect(address, timeout=5.0) as sock:
            sock.sendall(data)
            reply = sock.recv(4096)
    except OSError as error:
        return f"no reply ({type(error).__name__})"
    if not reply:
        return "no reply (closed)"
    status = reply.split(b"\r\n", 1)[0].decode("latin-1")
    body = reply.split(b"\r\n\r\n", 1)[-1]
    with contextlib.suppress(ValueError, KeyError):
        status += f" {json.loads(body)['error']['code']}"
    return status


# ---------------------------------------------------------------------- interleaved comparison


def _load_legacy(path: str) -> Any:
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("legacy_policy_server", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def compare(predictor: Any, observation: dict, n: int, legacy_path: str | None) -> None:
    """p50/p99 of each stack with requests interleaved call by call, so load drift hits all alike."""
    from vla_dino.runtime.server import PolicyServer, ServerConfig

    stacks: list[tuple[str, Callable[[], None], Callable[[], tuple[str, int]]]] = []
    ours = PolicyServer(predictor, ServerConfig(host=HOST, port=0, token=TOKEN)).start()
    stacks.append(("vla_dino asyncio server", ours.shutdown, lambda: ours.address))
    if legacy_path:
        legacy_module = _load_legacy(legacy_path)
        legacy = legacy_module.PolicyServer(predictor, legacy_module.ServerConfig(host=HOST, port=0, token=TOKEN)).start()
        stacks.append((f"legacy http.server ({Path(legacy_path).name})", legacy.shutdown, lambda: legacy.address))
    try:
        uvi = _UvicornHandle(predictor, max_connections=64, max_queue=4)
        stacks.append((f"uvicorn {uvi.version} (raw ASGI)", uvi.stop, lambda: tuple(uvi.address)))
    except ImportError:
        print("uvicorn not importable: skipped")
    clients = [PolicyClient(*address(), token=TOKEN, timeout_s=10) for _, _, address in stacks]
    inproc: list[float] = []
    times: list[list[float]] = [[] for _ in stacks]
    try:
        for client in clients:
            for _ in range(20):
                client.predict_chunk(observation)
        for _ in range(n):
            start = time.perf_counter()
            predictor.predict_chunk(observation)
            inproc.append((time.perf_counter() - start) * 1e3)
            for i, client in enumerate(clients):
                start = time.perf_counter()
                client.predict_chunk(observation)
                times[i].append((time.perf_counter() - start) * 1e3)
    finally:
        for client in clients:
            client.close()
        for _, stop, _ in stacks:
            stop()
    p50_in, p99_in = percentiles(inproc)
    print(f"{'stack (keep-alive, interleaved)':<40}{'p50 ms':>9}{'p99 ms':>9}{'overhead p50':>14}")
    print(f"{'in-process predict_chunk':<40}{p50_in:>9.3f}{p99_in:>9.3f}{'':>14}")
    for (name, _, _), values in zip(stacks, times):
        p50, p99 = percentiles(values)
        print(f"{name:<40}{p50:>9.3f}{p99:>9.3f}{p50 - p50_in:>11.3f} ms")


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stack", default="vla_dino", choices=["vla_dino", "uvicorn"], help="server under test")
    parser.add_argument("--policy", default="act", choices=["act", "constant"],
                        help="act: tiny random-init ACT through PolicyRuntime; constant: a zero-cost predictor with the same "
                             "spec (isolates the server's own cost on a busy machine)")
    parser.add_argument("--sequential", type=int, default=2000, help="keep-alive requests, one after another")
    parser.add_argument("--inprocess", type=int, default=500, help="in-process predict_chunk calls")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=20)
    parser.add_argument("--attackers", type=int, default=16, help="slowloris / idle sockets (the server gets 16 slots)")
    parser.add_argument("--trickle-s", type=float, default=4.0, help="slowloris: seconds between header lines")
    parser.add_argument("--attack-s", type=float, default=12.0, help="client time under each attack (> the 10 s read timeout of http.server)")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="the whole run stops after this")
    parser.add_argument("--compare", type=int, default=0,
                        help="instead of the fault table: N keep-alive requests to each available stack, interleaved call by "
                             "call in one process (fair on a busy machine): ours, uvicorn if importable, --legacy-server")
    parser.add_argument("--legacy-server", default=None,
                        help="a previous server.py to include in --compare, e.g. from `git show <commit>:vla_dino/runtime/server.py`")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    started = time.monotonic()
    rows: list[tuple[str, str]] = []

    def row(name: str, value: str) -> None:
        rows.append((name, value))
        print(f"  {name:<48} {value}", flush=True)

    def time_left(phase: str) -> bool:
        if time.monotonic() - started < args.max_seconds:
            return True
        row(phase, f"skipped (--max-seconds={args.max_seconds:g} reached)")
        return False

    with tempfile.TemporaryDirectory() as tmp:
        path = write_random_checkpoint(Path(tmp) / "pretrained_model", "act", cameras={"front": (32, 32)}, state_dim=8, action_dim=7, **TINY_ACT)
        act = PolicyRuntime.from_pretrained(path, RuntimeConfig(device="cpu", dtype="fp32", warmup_iters=3))
    observation = act._synthetic_observation(act.spec.inputs, seed=0)
    runtime = act if args.policy == "act" else ConstantPredictor(act)
    print(f"machine: {machine_name('cpu')}; stack: {args.stack}; policy: "
          f"{'tiny ACT (random init), 1 camera 32x32, CPU fp32' if args.policy == 'act' else 'constant chunk (no model)'}, "
          f"chunk {act.spec.chunk_size}x{act.spec.action_dim}\n")

    if args.compare:
        compare(runtime, observation, args.compare, args.legacy_server)
        return

    inproc = []
    for _ in range(args.inprocess):
        start = time.perf_counter()
        runtime.predict_chunk(observation)
        inproc.append((time.perf_counter() - start) * 1e3)
    p50_in, p99_in = percentiles(inproc)
    row("in-process predict_chunk p50 / p99", f"{p50_in:.3f} / {p99_in:.3f} ms ({args.inprocess} calls)")

    with serve(args.stack, runtime, max_connections=64, max_queue=64) as (address, _):
        result = timed_requests(address, observation, args.sequential, seconds=120, new_connection=False)
        p50, p99 = percentiles(result["latencies"])
        row(f"{args.stack}: sequential keep-alive p50 / p99", f"{p50:.3f} / {p99:.3f} ms ({result['served']}/{result['requests']} served)")
        row(f"{args.stack}: loopback overhead (p50 server - in-process)", f"{p50 - p50_in:.3f} ms")
        if time_left("concurrent clients"):
            with ThreadPoolExecutor(args.clients) as pool:
                results = list(pool.map(lambda _: timed_requests(address, observation, args.per_client, 60, False), range(args.clients)))
            lat = [x for r in results for x in r["latencies"]]
            total = sum(r["requests"] for r in results)
            codes: dict[str, int] = {}
            for r in results:
                for code, n in r["codes"].items():
                    codes[code] = codes.get(code, 0) + n
            p50c, p99c = percentiles(lat)
            row(f"{args.stack}: {args.clients} concurrent clients", f"{len(lat)}/{total} served, p50 {p50c:.2f} / p99 {p99c:.2f} ms {codes or ''}")

    for mode in ("slowloris", "idle"):
        if not time_left(f"{mode} attack"):
            continue
        with serve(args.stack, runtime, max_connections=16, max_queue=4) as (address, server):
            with Attackers(address, args.attackers, mode, args.trickle_s, limit_s=args.attack_s + 5) as attack:
                result = timed_requests(address, observation, count=10_000, seconds=args.attack_s, new_connection=True)
            p50, p99 = percentiles(result["latencies"])
            extra = f", server {server.stats()}" if server is not None and hasattr(server, "stats") else ""
            row(f"{args.stack}: {mode} x{args.attackers}, new-connection client",
                f"{result['served']}/{result['requests']} served ({100 * result['served'] / max(result['requests'], 1):.0f} %), "
                f"p50 {p50:.2f} / p99 {p99:.2f} ms {result['codes'] or ''} (attacker reconnects {attack.reconnects}{extra})")

    if time_left("header flood"):
        with serve(args.stack, runtime, max_connections=16, max_queue=4) as (address, _):
            flood = header_flood(address)
            row(f"{args.stack}: 16 x 6.4 MB header flood, RSS",
                f"before {flood['before']:.0f} MB, peak {flood['peak']:.0f} MB, after {flood['after']:.0f} MB; replies {flood['replies']}")

    if time_left("bad inputs"):
        with serve(args.stack, runtime, max_connections=16, max_queue=4) as (address, _):
            huge = {**observation, "observation.state": np.full(observation["observation.state"].shape, 1e30, np.float32)}
            try:
                with PolicyClient(*address, token=TOKEN) as client:
                    chunk = client.predict_chunk(huge)
                row(f"{args.stack}: observation.state = 1e30", f"200 with {int(np.isnan(chunk).sum())}/{chunk.size} actions NaN")
            except PolicyServerError as error:
                row(f"{args.stack}: observation.state = 1e30", f"{error.status} {error.code} ({getattr(error, 'reason', None)})")
            except Exception as error:  # an older client may raise something else
                row(f"{args.stack}: observation.state = 1e30", f"{type(error).__name__}: {error}")
            auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: {CONTENT_TYPE}\r\nHost: {HOST}\r\n"
            row(f"{args.stack}: Content-Length: 12abc",
                raw_request(address, f"POST /v1/predict HTTP/1.1\r\n{auth}Content-Length: 12abc\r\n\r\n".encode()))
            head = json.dumps({"arrays": [{"name": "observation.state", "dtype": "float32", "shape": [2**31 - 1] * 8}]}).encode()
            body = len(head).to_bytes(4, "little") + head
            row(f"{args.stack}: shape product overflowing int64",
                raw_request(address, f"POST /v1/predict HTTP/1.1\r\n{auth}Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body))
        if args.stack == "vla_dino":
            from vla_dino.runtime.server import PolicyServer, ServerConfig

            try:
                server = PolicyServer(runtime, ServerConfig(host="::1", port=0, token=TOKEN)).start()
                try:
                    with PolicyClient("::1", server.address[1], token=TOKEN) as client:
                        client.predict_chunk(observation)
                    row("vla_dino: bind ::1 (IPv6 loopback)", "serves")
                finally:
                    server.shutdown()
            except Exception as error:
                row("vla_dino: bind ::1 (IPv6 loopback)", f"fails: {type(error).__name__}: {error}")

    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"stack": args.stack, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
