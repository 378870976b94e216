"""Policy server: a GPU workstation answers action-chunk requests from a robot computer.

Standard-library HTTP (``http.server``) with the frame format of :mod:`vla_dino.runtime.protocol`.
Safety rules:

- binds 127.0.0.1 by default; refuses to start on any other address without a token, and
  when a token is set every request must carry ``Authorization: Bearer <token>``;
- every request is checked before it reaches the model: body size (``Content-Length`` is
  required and capped at what the policy's inputs need), frame layout, array names (camera
  names), dtypes and shapes — errors come back as JSON naming what was wrong;
- at most ``max_connections`` connections are served at once and at most ``max_queue``
  predictions wait for the single inference worker; beyond that the reply is 503;
- a failing request never takes the server down.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

import numpy as np

from vla_dino.runtime.protocol import (
    CONTENT_TYPE,
    MAX_HEADER_BYTES,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_body,
)
from vla_dino.runtime.spec import ObservationError, PolicySpec

logger = logging.getLogger(__name__)

TOKEN_ENV = "VLA_DINO_SERVER_TOKEN"


class Predictor(Protocol):
    spec: PolicySpec

    def predict_chunk(self, observation: dict[str, np.ndarray], task: str | None = None) -> np.ndarray: ...


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765  # 0 = pick a free port
    token: str | None = None  # required when host is not loopback; prefer the VLA_DINO_SERVER_TOKEN env var
    max_queue: int = 4  # predictions waiting for the inference worker
    max_connections: int = 16
    request_timeout_s: float = 10.0  # socket reads and the wait for a queued prediction


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat as exposed


class _Request:
    __slots__ = ("observation", "task", "future", "enqueued")

    def __init__(self, observation: dict[str, np.ndarray], task: str | None) -> None:
        self.observation, self.task = observation, task
        self.future: Future = Future()
        self.enqueued = time.perf_counter()


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.close = status, code, message, close


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.policy_server.config.request_timeout_s  # no client can hold a thread forever
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK add ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    default_request_version = "HTTP/1.1"  # answer even garbage request lines with a status line

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by http.server itself (bad request line, unsupported method): JSON like ours."""
        body = error_body(code, "bad_http", message or HTTPStatus(code).phrase)
        self.close_connection = True
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _dispatch(self, handler) -> None:
        try:
            self._authorize()
            status, content_type, body = handler()
        except _HTTPError as error:
            if error.close:
                self.close_connection = True  # the unread body would otherwise be parsed as the next request
            status, content_type, body = error.status, "application/json", error_body(error.status, error.code, error.message)
            logger.info("rejected %s %s: %s %s", self.command, self.path, error.status.value, error.message)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", "Bearer")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _authorize(self) -> None:
        token = self.server.policy_server.config.token
        if token is None:
            return
        given = self.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong 'Authorization: Bearer <token>' header", close=True)

    def _get(self) -> tuple[HTTPStatus, str, bytes]:
        if self.path == "/v1/health":
            return HTTPStatus.OK, "application/json", b'{"status":"ok"}'
        if self.path == "/v1/spec":
            return HTTPStatus.OK, "application/json", json.dumps(self.server.policy_server.spec.to_json()).encode()
        raise _HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint GET {self.path}; try /v1/health, /v1/spec")

    def _post(self) -> tuple[HTTPStatus, str, bytes]:
        server = self.server.policy_server
        if self.path != "/v1/predict":
            raise _HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint POST {self.path}; try /v1/predict", close=True)
        if self.headers.get("Content-Type") != CONTENT_TYPE:
            raise _HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "bad_content_type", f"Content-Type must be {CONTENT_TYPE}", close=True)
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length (bytes) is required", close=True)
        if int(length) > server.max_request_bytes:
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large",
                f"body of {length} bytes exceeds {server.max_request_bytes} (the policy's inputs need {server.spec.input_nbytes})",
                close=True,
            )
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "truncated", f"body ended after {len(body)} of {length} bytes", close=True)
        try:
            header, observation = decode_frame(body)
            task = header.get("task")
            if task is not None and not isinstance(task, str):
                raise ProtocolError(f"header 'task' must be a string, got {type(task).__name__}")
            server.spec.validate(observation)
        except ProtocolError as error:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_frame", str(error)) from None
        except ObservationError as error:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_observation", str(error)) from None
        return HTTPStatus.OK, CONTENT_TYPE, server.submit(observation, task)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    policy_server: PolicyServer

    def process_request(self, request, client_address) -> None:
        if not self.policy_server._connections.acquire(blocking=False):
            body = error_body(503, "too_many_connections", "server is at its connection limit; retry later")
            head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            try:
                request.sendall(head.encode() + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.policy_server._connections.release()


class PolicyServer:
    """Serve ``predictor.predict_chunk`` over HTTP; one worker thread runs inference in arrival order."""

    def __init__(self, predictor: Predictor, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._check_bind(self.config)
        self.predictor = predictor
        self.spec = predictor.spec
        self.max_request_bytes = self.spec.input_nbytes + MAX_HEADER_BYTES + 4
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=self.config.max_queue)
        self._stopping = threading.Event()
        self._connections = threading.BoundedSemaphore(self.config.max_connections)
        self._httpd = _HTTPServer((self.config.host, self.config.port), _Handler, bind_and_activate=True)
        self._httpd.policy_server = self
        self._threads: list[threading.Thread] = []

    @staticmethod
    def _check_bind(config: ServerConfig) -> None:
        if config.token is not None and not config.token:
            raise ValueError("--server.token is empty: give a real secret, or leave it unset on 127.0.0.1")
        if not is_loopback(config.host) and config.token is None:
            raise ValueError(
                f"refusing to serve on {config.host!r} without a token: anyone on the network could drive the "
                f"robot. Set {TOKEN_ENV} (or --server.token), or bind 127.0.0.1"
            )

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return host, port

    def submit(self, observation: dict[str, np.ndarray], task: str | None) -> bytes:
        request = _Request(observation, task)
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "busy", f"{self.config.max_queue} predictions already queued; retry later") from None
        try:
            return request.future.result(timeout=self.config.request_timeout_s)
        except TimeoutError:
            request.future.cancel()
            raise _HTTPError(HTTPStatus.GATEWAY_TIMEOUT, "timeout", f"no prediction within {self.config.request_timeout_s} s") from None
        except Exception as error:
            logger.exception("prediction failed")
            raise _HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, "inference_failed", f"{type(error).__name__}: {error}") from None

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                request = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if not request.future.set_running_or_notify_cancel():
                continue  # its client gave up waiting
            started = time.perf_counter()
            try:
                action = self.predictor.predict_chunk(request.observation, request.task)
                done = time.perf_counter()
                timing = {"queue": (started - request.enqueued) * 1e3, "inference": (done - started) * 1e3}
                request.future.set_result(encode_frame({"action": np.asarray(action, dtype=np.float32)}, timing_ms=timing))
            except Exception as error:  # reported to that client only; the worker keeps serving
                request.future.set_exception(error)

    def start(self) -> PolicyServer:
        """Serve in background threads (returns at once)."""
        for target, name in ((self._work, "policy-worker"), (self._httpd.serve_forever, "policy-http")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("policy server on http://%s:%d (auth %s)", *self.address, "on" if self.config.token else "off")
        return self

    def shutdown(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["PolicyServer", "ServerConfig", "TOKEN_ENV", "is_loopback"]
