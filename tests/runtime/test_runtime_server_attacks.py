"""The policy server under attack on loopback: slowloris, idle sockets, huge headers, NaN chunks, bad hosts, TLS, IPv6."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vla_dino.runtime.client import PolicyClient, PolicyServerError
from vla_dino.runtime.protocol import CONTENT_TYPE, encode_frame
from vla_dino.runtime.server import MAX_HEAD_BYTES, PolicyServer, ServerConfig

TOKEN = "attack-test-token"


class ConstantPredictor:
    """Answers instantly with a fixed chunk (``fill``), so the tests time the server, not a model."""

    def __init__(self, spec, fill: float = 0.5) -> None:
        self.spec, self.fill = spec, fill

    def predict_chunk(self, observation, task=None):
        return np.full((self.spec.chunk_size, self.spec.action_dim), self.fill, np.float32)


def observation(runtime, seed=0):
    return runtime._synthetic_observation(runtime.spec.inputs, seed=seed)


def raw(address, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` on a fresh socket and read the reply until the server closes."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def served_fraction(address, obs, duration_s: float, token: str | None = TOKEN) -> tuple[float, list[float]]:
    """Authenticated requests, each on a new connection (the hardest case: it needs a free slot)."""
    ok, latencies, end = 0, [], time.perf_counter() + duration_s
    total = 0
    while time.perf_counter() < end:
        total += 1
        start = time.perf_counter()
        try:
            with PolicyClient(*address, token=token, timeout_s=3) as client:
                client.predict_chunk(obs)
            ok += 1
            latencies.append(time.perf_counter() - start)
        except (PolicyServerError, OSError):
            pass
    return ok / total, latencies


def test_authenticated_client_is_served_while_32_half_open_connections_are_held(act_runtime):
    """Slowloris: 32 sockets send a request line and one header line every 0.3 s, more than the
    server's 16 slots. Before: every slot taken, 503 for the real client for as long as it lasted."""
    predictor = ConstantPredictor(act_runtime.spec)
    config = ServerConfig(port=0, token=TOKEN, max_connections=16, request_deadline_s=1.0)
    obs = observation(act_runtime)
    with PolicyServer(predictor, config) as server:
        stop = threading.Event()
        closed_by_server = []

        def slowloris():
            while not stop.is_set():
                try:
                    sock = socket.create_connection(server.address, timeout=5)
                    sock.sendall(b"POST /v1/predict HTTP/1.1\r\n")
                    while not stop.wait(0.3):
                        sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    closed_by_server.append(1)  # evicted or timed out: reconnect, as an attacker would
                    continue
                finally:
                    sock.close()

        attackers = [threading.Thread(target=slowloris, daemon=True) for _ in range(32)]
        for thread in attackers:
            thread.start()
        time.sleep(0.5)  # the attack is established
        fraction, latencies = served_fraction(server.address, obs, duration_s=2.0)
        stop.set()
        for thread in attackers:
            thread.join(5)
        counters = server.stats()
    assert fraction == 1.0, counters
    assert len(latencies) >= 10 and max(latencies) < 1.0
    assert counters["evicted"] + counters["deadline"] > 0 and closed_by_server  # the attackers were pushed out


def test_idle_sockets_do_not_hold_the_slots(act_runtime):
    predictor = ConstantPredictor(act_runtime.spec)
    obs = observation(act_runtime)
    with PolicyServer(predictor, ServerConfig(port=0, token=TOKEN, max_connections=16)) as server:
        idle = [socket.create_connection(server.address, timeout=5) for _ in range(32)]
        try:
            fraction, latencies = served_fraction(server.address, obs, duration_s=1.0)
            assert fraction == 1.0 and max(latencies) < 1.0
            assert server.stats()["open_connections"] <= 16
        finally:
            for sock in idle:
                sock.close()


def test_huge_headers_are_refused_before_they_cost_memory(act_runtime):
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, token=TOKEN)) as server:
        head = b"POST /v1/predict HTTP/1.1\r\n" + b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(100))
        reply = raw(server.address, head + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 431") and b"headers_too_large" in reply and str(MAX_HEAD_BYTES).encode() in reply
        many = b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(100)) + b"\r\n"
        assert raw(server.address, many).startswith(b"HTTP/1.1 431")


def test_a_slow_body_hits_the_whole_request_deadline(act_runtime):
    obs = observation(act_runtime)
    frame = encode_frame(obs)
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, token=TOKEN, request_deadline_s=0.5)) as server:
        with socket.create_connection(server.address, timeout=5) as sock:
            start = time.perf_counter()
            sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {CONTENT_TYPE}\r\n"
                         f"Content-Length: {len(frame)}\r\n\r\n".encode() + frame[:100])
            reply = sock.recv(65536)
            elapsed = time.perf_counter() - start
        assert reply.startswith(b"HTTP/1.1 408") and b"request_deadline" in reply and b"body" in reply
        assert 0.4 < elapsed < 2.0


def test_value_error_paths_are_answered_with_400(act_runtime):
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, token=TOKEN)) as server:
        auth = f"Authorization: Bearer {TOKEN}\r\nContent-Type: {CONTENT_TYPE}\r\n"
        reply = raw(server.address, f"POST /v1/predict HTTP/1.1\r\n{auth}Content-Length: 12abc\r\n\r\n".encode())
        assert reply.startswith(b"HTTP/1.1 400") and b"bad_content_length" in reply
        # A shape whose element count overflows int64 (used to raise an unhandled ValueError).
        head = json.dumps({"arrays": [{"name": "observation.state", "dtype": "float32", "shape": [2**31 - 1] * 8}]}).encode()
        body = len(head).to_bytes(4, "little") + head
        reply = raw(server.address, f"POST /v1/predict HTTP/1.1\r\n{auth}Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert reply.startswith(b"HTTP/1.1 400") and b"bad_frame" in reply and b"needs" in reply
        chunked = raw(server.address, f"POST /v1/predict HTTP/1.1\r\n{auth}Transfer-Encoding: chunked\r\n\r\n".encode())
        assert chunked.startswith(b"HTTP/1.1 501") and b"Content-Length" in chunked


class NaNPredictor(ConstantPredictor):
    def __init__(self, spec) -> None:
        super().__init__(spec, fill=np.nan)


def test_nan_actions_never_leave_the_server(act_runtime):
    obs = observation(act_runtime)
    with PolicyServer(NaNPredictor(act_runtime.spec), ServerConfig(port=0)) as server, PolicyClient(*server.address) as client:
        with pytest.raises(PolicyServerError) as error:
            client.predict_chunk(obs)
    assert (error.value.status, error.value.code, error.value.reason) == (500, "unsafe_action", "non_finite")
    # The real runtime behind the server: a finite but huge state that the model turns into NaN.
    with PolicyServer(act_runtime, ServerConfig(port=0)) as server, PolicyClient(*server.address) as client:
        with pytest.raises(PolicyServerError) as error:
            client.predict_chunk({**obs, "observation.state": np.full(4, 1e30, np.float32)})
        assert (error.value.code, error.value.reason) == ("unsafe_action", "non_finite")
        np.testing.assert_array_equal(client.predict_chunk(obs), act_runtime.predict_chunk(obs))  # still serving


def test_tokenless_server_checks_the_host_header(act_runtime):
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0)) as server:
        port = server.address[1]
        rebinding = raw(server.address, f"GET /v1/spec HTTP/1.1\r\nHost: attacker.example:{port}\r\n\r\n".encode())
        assert rebinding.startswith(b"HTTP/1.1 403") and b"bad_host" in rebinding and b"--server.allowed_hosts" in rebinding
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert raw(server.address, f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()).startswith(b"HTTP/1.1 200")
        assert raw(server.address, b"GET /v1/health HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 400")  # no Host at all
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, allowed_hosts=["robot-gpu.lan"])) as server:
        ok = raw(server.address, b"GET /v1/health HTTP/1.1\r\nHost: robot-gpu.lan:8765\r\nConnection: close\r\n\r\n")
        assert ok.startswith(b"HTTP/1.1 200")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback_binds_and_serves(act_runtime):
    obs = observation(act_runtime)
    with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(host="::1", port=0)) as server:
        assert server.address[0] == "::1" and server.url.startswith("http://[::1]:")
        with PolicyClient("[::1]", server.address[1]) as client:
            assert client.predict_chunk(obs).shape == (act_runtime.spec.chunk_size, act_runtime.spec.action_dim)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_tls_serves_https_and_refuses_plain_http(act_runtime, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    obs = observation(act_runtime)
    config = ServerConfig(port=0, token=TOKEN, tls_cert=str(cert), tls_key=str(key))
    with PolicyServer(ConstantPredictor(act_runtime.spec), config) as server:
        assert server.url.startswith("https://")
        with PolicyClient(*server.address, token=TOKEN, tls=True, ca_file=str(cert)) as client:
            assert client.predict_chunk(obs)[0, 0] == 0.5
        with pytest.raises((OSError, PolicyServerError)):
            PolicyClient(*server.address, token=TOKEN, timeout_s=2).predict_chunk(obs)  # the token never goes out in clear
    with pytest.raises(ValueError, match="tls_cert and --server.tls_key go together"):
        PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, tls_cert=str(cert)))
    with pytest.raises(ValueError, match="--server.tls_key=.*no such file"):
        PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, tls_cert=str(cert), tls_key=str(tmp_path / "nope.pem")))


def test_rejections_are_logged_with_their_reason_and_rate_limited(act_runtime, caplog):
    obs = observation(act_runtime)
    with caplog.at_level(logging.INFO, logger="vla_dino.runtime.server"):
        with PolicyServer(ConstantPredictor(act_runtime.spec), ServerConfig(port=0, token=TOKEN, log_every_s=60)) as server:
            for _ in range(5):
                with pytest.raises(PolicyServerError, match="401"):
                    PolicyClient(*server.address, token="wrong").predict_chunk(obs)
    messages = [r.getMessage() for r in caplog.records]
    assert any("auth on" in m for m in messages)  # the banner says whether auth is on
    unauthorized = [m for m in messages if "401 unauthorized" in m]
    assert len(unauthorized) == 1 and "Bearer" in unauthorized[0]  # once per 60 s, not five times


def test_serve_cli_logging_survives_lerobot_having_configured_logging_first():
    """``import lerobot`` installs root handlers first; the serve CLI's banner and rejections must still show."""
    code = (
        "import logging, lerobot.policies.factory\n"
        "from vla_dino.runtime.serve import configure_logging\n"
        "configure_logging()\n"
        "logging.getLogger('vla_dino.runtime.server').info('policy server on http://127.0.0.1:1: auth off')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "INFO vla_dino.runtime.server: policy server on http://127.0.0.1:1: auth off" in result.stderr
