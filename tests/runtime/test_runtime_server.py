"""Policy server on loopback: round trip, rejection of bad requests, bounded queue, auth."""

import http.client
import json
import socket
import threading

import numpy as np
import pytest

from vla_dino.runtime.client import PolicyClient, PolicyServerError
from vla_dino.runtime.protocol import CONTENT_TYPE, ProtocolError, decode_frame, encode_frame
from vla_dino.runtime.server import PolicyServer, ServerConfig, is_loopback

TOKEN = "test-token-0123"


@pytest.fixture(scope="module")
def served(act_runtime):
    with PolicyServer(act_runtime, ServerConfig(port=0, token=TOKEN, request_timeout_s=5)) as server:
        yield server


@pytest.fixture()
def client(served):
    host, port = served.address
    with PolicyClient(host, port, token=TOKEN, timeout_s=10) as client:
        yield client


def observation(runtime, seed=0):
    return runtime._synthetic_observation(runtime.spec.inputs, seed=seed)


def raw_post(server, body: bytes, headers: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request("POST", "/v1/predict", body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_frame_round_trip_is_exact():
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros((2, 2, 3), np.uint8) + 7}
    header, decoded = decode_frame(encode_frame(arrays, task="pick"))
    assert header == {"task": "pick"}
    for name in arrays:
        np.testing.assert_array_equal(decoded[name], arrays[name])
    with pytest.raises(ProtocolError, match="dtype"):
        encode_frame({"x": np.zeros(2, np.float64)})


def test_round_trip_equals_the_runtime(served, client, act_runtime):
    assert client.health() == {"status": "ok"}
    spec = client.spec()
    assert [i["name"] for i in spec["inputs"]] == [s.name for s in act_runtime.spec.inputs]
    for seed in range(3):
        obs = observation(act_runtime, seed)
        chunk = client.predict_chunk(obs)
        np.testing.assert_array_equal(chunk, act_runtime.predict_chunk(obs))
        assert set(client.last_timing_ms) == {"queue", "inference"}


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(served, client, act_runtime):
    good = observation(act_runtime)
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": CONTENT_TYPE}
    frame = encode_frame(good)
    cases = [
        (b"\x05\x00\x00\x00not json at all", auth, 400, "bad_frame", "JSON"),
        (frame[:-10], auth, 400, "bad_frame", "needs"),
        (frame + b"extra", auth, 400, "bad_frame", "after the last array"),
        (encode_frame({**good, "observation.images.side": good["observation.images.front"]}), auth, 422, "invalid_observation", "observation.images.side"),
        (encode_frame({**good, "observation.state": good["observation.state"].astype(np.uint8)}), auth, 422, "invalid_observation", "dtype float32"),
        (encode_frame({**good, "observation.images.front": np.zeros((64, 64, 3), np.uint8)}), auth, 422, "invalid_observation", "(32, 32, 3)"),
        (frame, {"Content-Type": CONTENT_TYPE}, 401, "unauthorized", "Bearer"),
        (frame, {"Authorization": "Bearer wrong", "Content-Type": CONTENT_TYPE}, 401, "unauthorized", "Bearer"),
        (frame, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/octet-stream"}, 415, "bad_content_type", CONTENT_TYPE),
        (b"\x00" * (served.max_request_bytes + 1), auth, 413, "too_large", "exceeds"),
    ]
    for body, headers, status, code, message in cases:
        got_status, reply = raw_post(served, body, headers)
        assert (got_status, reply["error"]["code"]) == (status, code), reply
        assert message in reply["error"]["message"]
    # Not HTTP at all, then a client that connects and says nothing: neither harms the server.
    with socket.create_connection(served.address, timeout=5) as sock:
        sock.sendall(b"\x00\xff garbage\r\n\r\n")
        reply = b"".join(iter(lambda: sock.recv(1024), b""))  # headers and body may come in separate packets
        assert reply.startswith(b"HTTP/1.1 400") and b"bad_http" in reply
    silent = socket.create_connection(served.address, timeout=5)
    np.testing.assert_array_equal(client.predict_chunk(good), act_runtime.predict_chunk(good))
    silent.close()
    with pytest.raises(PolicyServerError) as error:
        PolicyClient(*served.address).predict_chunk(good)
    assert error.value.status == 401


class GatedPredictor:
    """Blocks in predict_chunk until released: makes the queue state deterministic."""

    def __init__(self, spec):
        self.spec = spec
        self.started, self.release = threading.Event(), threading.Event()

    def predict_chunk(self, observation, task=None):
        self.started.set()
        assert self.release.wait(10)
        if task == "fail":
            raise RuntimeError("inference blew up")
        return np.full((self.spec.chunk_size, self.spec.action_dim), observation["observation.state"][0], np.float32)


def test_queue_is_bounded_and_errors_stay_with_their_request(act_runtime):
    predictor = GatedPredictor(act_runtime.spec)
    with PolicyServer(predictor, ServerConfig(port=0, max_queue=1, request_timeout_s=10)) as server:
        results = {}

        def call(name, value, task=None):
            obs = {**observation(act_runtime), "observation.state": np.full(4, value, np.float32)}
            try:
                with PolicyClient(*server.address, timeout_s=15) as c:
                    results[name] = c.predict_chunk(obs, task=task)
            except PolicyServerError as error:
                results[name] = error

        first = threading.Thread(target=call, args=("first", 1.0))
        first.start()
        assert predictor.started.wait(10)  # the worker holds the first request
        second = threading.Thread(target=call, args=("second", 2.0, "fail"))
        second.start()
        for _ in range(200):  # wait until the second one sits in the queue
            if server.stats()["in_flight"] >= 2:  # one running, one queued
                break
            threading.Event().wait(0.01)
        call("third", 3.0)
        assert isinstance(results["third"], PolicyServerError) and results["third"].status == 503
        predictor.release.set()
        first.join(10), second.join(10)
        assert results["first"][0, 0] == 1.0
        assert results["second"].status == 500 and "inference blew up" in results["second"].message
        call("fourth", 4.0)
        assert results["fourth"][0, 0] == 4.0


def test_refuses_to_bind_beyond_loopback_without_a_token(act_runtime):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("robot-gpu.local")
    with pytest.raises(ValueError, match="without a token"):
        PolicyServer(act_runtime, ServerConfig(host="0.0.0.0", port=0))
    with pytest.raises(ValueError, match="empty"):
        PolicyServer(act_runtime, ServerConfig(port=0, token=""))


def test_serve_cli_config_checks_the_bind_first_and_reads_the_token_from_the_env(act_checkpoint, monkeypatch, act_runtime):
    from vla_dino.runtime.serve import PolicyPath, ServeConfig, build_server
    from vla_dino.runtime.server import TOKEN_ENV

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(ValueError, match="without a token"):
        build_server(ServeConfig(policy=PolicyPath("/nonexistent"), server=ServerConfig(host="0.0.0.0", port=0)))
    monkeypatch.setenv(TOKEN_ENV, "from-env")
    config = ServeConfig(policy=PolicyPath(str(act_checkpoint)), server=ServerConfig(port=0))
    config.runtime.device, config.runtime.warmup_iters = "cpu", 1
    with build_server(config) as server:
        obs = observation(act_runtime)
        with pytest.raises(PolicyServerError, match="401"):
            PolicyClient(*server.address).predict_chunk(obs)
        np.testing.assert_array_equal(PolicyClient(*server.address, token="from-env").predict_chunk(obs), act_runtime.predict_chunk(obs))
