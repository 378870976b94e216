"""Policy server: a GPU workstation answers action-chunk requests from a robot computer.

HTTP/1.1 on the standard library's ``asyncio`` (one event loop thread, one inference worker
thread), with the frame format of :mod:`vla_dino.runtime.protocol` (no pickle). Why not
``http.server`` or uvicorn: see docs/runtime.md ("Choice of server stack"); in short, neither
puts a deadline on receiving a whole request (uvicorn's ``timeout_keep_alive`` only covers idle
time between requests, encode/uvicorn#157 "--timeout-request-start" is still open), and both
count a connection against the concurrency limit before it has authenticated.

Safety rules:

- binds 127.0.0.1 by default (IPv6 ``::1`` works too); refuses any other address without a
  token, and with a token every request must carry ``Authorization: Bearer <token>``
  (constant-time compare); ``tls_cert``/``tls_key`` serve HTTPS so the token is not sent in clear
  text on a LAN; in token-less mode the ``Host`` header must name a loopback host (DNS rebinding);
- **a request cannot stall the server**: its head (request line + headers, at most
  ``MAX_HEAD_BYTES``) and body must both arrive within ``request_deadline_s`` of its first byte,
  and a connection waiting for its first byte closes after ``idle_timeout_s``;
- **slots go to clients that authenticated**: at most ``max_connections`` sockets are open; when a
  new one arrives at the limit, the oldest connection that is idle or still sending its head
  (not yet authenticated) is closed to make room; only when every connection is in an
  authenticated request does a newcomer get ``503 too_many_connections``;
- bounded memory: a connection holds at most ``MAX_HEAD_BYTES`` before it authenticates, the body
  (``Content-Length`` required, capped at what the policy's inputs need) is read only after;
- every request is checked before it reaches the model (frame layout, array names, dtypes,
  shapes) and every chunk after (shape, NaN/inf: :class:`~vla_dino.runtime.guard.ActionGuard`);
  errors come back as JSON naming what was wrong, including every ``ValueError`` path (400);
- at most ``max_queue`` predictions wait for the single inference worker (503 ``busy`` beyond);
- rejections are logged with their reason, at most one line per reason per ``log_every_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import ssl
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

import numpy as np

from vla_dino.runtime.guard import ActionGuard, UnsafeActionError
from vla_dino.runtime.protocol import CONTENT_TYPE, MAX_HEADER_BYTES, ProtocolError, decode_frame, encode_frame, error_body
from vla_dino.runtime.spec import ObservationError, PolicySpec

logger = logging.getLogger(__name__)

TOKEN_ENV = "VLA_DINO_SERVER_TOKEN"
MAX_HEAD_BYTES = 16 * 1024  # request line + headers; http.server allowed 100 lines x 64 KiB = 6.4 MB
MAX_HEADER_LINES = 64
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Predictor(Protocol):
    spec: PolicySpec

    def predict_chunk(self, observation: dict[str, np.ndarray], task: str | None = None) -> np.ndarray: ...


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # "::1" for IPv6 loopback; another address needs a token
    port: int = 8765  # 0 = pick a free port
    token: str | None = None  # required when host is not loopback; prefer the VLA_DINO_SERVER_TOKEN env var
    max_queue: int = 4  # predictions waiting for the inference worker
    max_connections: int = 64  # open sockets; at the limit the oldest idle / unauthenticated one makes room
    request_timeout_s: float = 10.0  # wait for a queued prediction
    request_deadline_s: float = 5.0  # whole request (head + body) from its first byte; also the reply write
    idle_timeout_s: float = 30.0  # keep-alive connection without a request (evicted earlier when slots are needed)
    allowed_hosts: list[str] | None = None  # Host header allow-list; None: loopback names without a token, no check with one
    tls_cert: str | None = None  # PEM certificate (chain) to serve HTTPS; with tls_key
    tls_key: str | None = None
    log_every_s: float = 10.0  # rejection logs: one line per reason per this many seconds, with a count of the rest


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _host_name(value: str) -> str:
    """Host header → host name without port: ``[::1]:8765`` → ``::1``, ``localhost:8765`` → ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    return value.split(":")[0] if value.count(":") == 1 else value


def is_loopback(host: str) -> bool:
    host = _strip_brackets(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything: treat as exposed


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, code: str, message: str, close: bool = False, **extra: object) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.close, self.extra = status, code, message, close, extra


class _RateLimitedLog:
    """One log line per key per ``interval_s``; the next one reports how many were suppressed."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, level: int, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -float("inf")) < self.interval_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += f" (+{suppressed} more '{key}' in the last {self.interval_s:g} s)"
        logger.log(level, message, *args)


class _Connection:
    """Book-keeping of one socket: its state decides whether it may be evicted for a newcomer."""

    __slots__ = ("writer", "peer", "state", "since")

    def __init__(self, writer: asyncio.StreamWriter, peer: str) -> None:
        self.writer, self.peer = writer, peer
        self.state, self.since = "idle", time.monotonic()  # idle | head | busy

    def set(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()

    @property
    def evictable(self) -> bool:
        return self.state in ("idle", "head")


class _Request:
    __slots__ = ("method", "path", "version", "headers", "body")

    def __init__(self, method: str, path: str, version: str, headers: dict[str, str]) -> None:
        self.method, self.path, self.version, self.headers = method, path, version, headers
        self.body = b""

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return self.version == "HTTP/1.1" and "close" not in connection


def _parse_head(head: bytes) -> _Request:
    """Request line and headers (``head`` ends with CRLF CRLF); ``_HTTPError`` 400 on anything malformed."""
    try:
        text = head.decode("latin-1")  # RFC 9110: header bytes are opaque octets; names are checked below
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_http", "request head is not text", close=True) from None
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_http", f"malformed request line {lines[0][:80]!r}", close=True)
    if len(lines) - 1 > MAX_HEADER_LINES:
        raise _HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", f"more than {MAX_HEADER_LINES} header lines", close=True)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_http", f"malformed header line {line[:80]!r}", close=True)
        key = name.lower()
        if key in headers and key in ("content-length", "host", "authorization", "content-type", "transfer-encoding"):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_http", f"header {name!r} given twice", close=True)
        headers[key] = value.strip()
    return _Request(parts[0], parts[1], parts[2], headers)


class PolicyServer:
    """Serve ``predictor.predict_chunk`` over HTTP; one worker thread runs inference in arrival order."""

    def __init__(self, predictor: Predictor, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self._check_bind(self.config)
        self.predictor = predictor
        self.spec = predictor.spec
        self.max_request_bytes = self.spec.input_nbytes + MAX_HEADER_BYTES + 4
        self._shape_guard = ActionGuard(self.spec.action_dim, source="the policy's spec")  # finite, (T, action_dim)
        self._allowed_hosts = self._host_allow_list(self.config)
        self._log = _RateLimitedLog(self.config.log_every_s)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-worker")
        self._in_flight = 0  # predictions running or queued (touched only on the event loop)
        self._connections: dict[_Connection, None] = {}  # insertion-ordered set
        self.counters = dict.fromkeys(("accepted", "evicted", "refused_full", "deadline", "idle_closed", "served", "rejected"), 0)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._closed = False
        tls = self._tls_context(self.config)
        self.scheme = "https" if tls else "http"
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._handle, _strip_brackets(self.config.host), self.config.port, ssl=tls,
                ssl_handshake_timeout=self.config.request_deadline_s if tls else None,
                limit=MAX_HEAD_BYTES, reuse_address=True, backlog=128,
            ))
        except BaseException:
            self._loop.close()
            self._executor.shutdown(wait=False)
            raise

    # ------------------------------------------------------------------ configuration

    @staticmethod
    def _check_bind(config: ServerConfig) -> None:
        """Every setting that can be checked before loading a model (``serve`` calls this first)."""
        if config.token is not None and not config.token:
            raise ValueError("--server.token is empty: give a real secret, or leave it unset on 127.0.0.1")
        if not is_loopback(config.host) and config.token is None:
            raise ValueError(
                f"refusing to serve on {config.host!r} without a token: anyone on the network could drive the "
                f"robot. Set {TOKEN_ENV} (or --server.token), or bind 127.0.0.1"
            )
        for name in ("request_timeout_s", "request_deadline_s", "idle_timeout_s", "log_every_s"):
            if not getattr(config, name) > 0:
                raise ValueError(f"--server.{name}={getattr(config, name)}: must be > 0")
        if config.max_connections < 1:
            raise ValueError(f"--server.max_connections={config.max_connections}: must be >= 1")
        if config.max_queue < 0:
            raise ValueError(f"--server.max_queue={config.max_queue}: must be >= 0")
        if (config.tls_cert is None) != (config.tls_key is None):
            raise ValueError("--server.tls_cert and --server.tls_key go together (PEM certificate and its private key)")
        for name in ("tls_cert", "tls_key"):
            path = getattr(config, name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"--server.{name}={path}: no such file")
        if config.allowed_hosts is not None and not all(isinstance(h, str) and h for h in config.allowed_hosts):
            raise ValueError(f"--server.allowed_hosts={config.allowed_hosts}: expected a list of host names")

    @staticmethod
    def _host_allow_list(config: ServerConfig) -> frozenset[str] | None:
        if config.allowed_hosts is not None:
            return frozenset(_strip_brackets(h).lower() for h in config.allowed_hosts)
        if config.token is None:  # token-less loopback mode: only a browser-proof Host (DNS rebinding)
            return frozenset({*LOOPBACK_HOSTS, _strip_brackets(config.host).lower()})
        return None

    @staticmethod
    def _tls_context(config: ServerConfig) -> ssl.SSLContext | None:
        if config.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (ssl.SSLError, OSError) as error:
            raise ValueError(f"--server.tls_cert/--server.tls_key: cannot load ({error})") from None
        return context

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def url(self) -> str:
        host, port = self.address
        return f"{self.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PolicyServer:
        """Serve in a background thread (returns at once)."""
        self._thread = threading.Thread(target=self._loop.run_forever, name="policy-http", daemon=True)
        self._thread.start()
        auth = "on (Bearer token)" if self.config.token else f"off (loopback only; Host must be one of {sorted(self._allowed_hosts or ())})"
        logger.info("policy server on %s: auth %s, TLS %s, max %d connections, request deadline %.3g s",
                    self.url, auth, "on" if self.scheme == "https" else "off", self.config.max_connections, self.config.request_deadline_s)
        if self.config.token and self.scheme == "http" and not is_loopback(self.config.host):
            logger.warning("the token travels in clear text on %s: set --server.tls_cert/--server.tls_key "
                           "(or use an SSH tunnel / a trusted robot network)", self.config.host)
        return self

    async def _aclose(self) -> None:
        self._server.close()
        for connection in list(self._connections):
            connection.writer.transport.abort()
        await asyncio.sleep(0)  # let the handlers see their closed sockets

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(timeout=5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        else:
            self._loop.run_until_complete(self._aclose())
        try:
            tasks = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            with contextlib.suppress(TimeoutError):
                self._loop.run_until_complete(asyncio.wait_for(self._server.wait_closed(), 2))
        finally:
            self._loop.close()
            self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ connections

    def _admit(self, connection: _Connection) -> bool:
        """Make room for ``connection``: evict the oldest idle / unauthenticated one at the limit."""
        if len(self._connections) >= self.config.max_connections:
            victims = [c for c in self._connections if c.evictable]
            if not victims:
                return False
            victim = min(victims, key=lambda c: c.since)
            self.counters["evicted"] += 1
            self._log(logging.WARNING, "evicted", "closed %s connection from %s (%.1f s in that state) to admit %s: at %d connections",
                      victim.state, victim.peer, time.monotonic() - victim.since, connection.peer, self.config.max_connections)
            self._connections.pop(victim, None)
            victim.writer.transport.abort()
        self._connections[connection] = None
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # reply in one segment, no Nagle delay
        connection = _Connection(writer, peer)
        if not self._admit(connection):
            self.counters["refused_full"] += 1
            self._log(logging.WARNING, "too_many_connections", "refused %s: %d connections, all in authenticated requests", peer, self.config.max_connections)
            await self._reply_error(writer, _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "too_many_connections",
                                                       "server is at its connection limit; retry later", close=True))
            writer.transport.abort()
            return
        self.counters["accepted"] += 1
        try:
            while await self._serve_one(reader, writer, connection, peer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass  # the peer went away (or was evicted): nothing to answer
        except asyncio.CancelledError:
            pass
        finally:
            self._connections.pop(connection, None)
            writer.transport.abort()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, connection: _Connection, peer: str) -> bool:
        """Read, answer one request; True to keep the connection for another."""
        connection.set("idle")
        try:
            async with asyncio.timeout(self.config.idle_timeout_s):
                first = await reader.readexactly(1)
        except TimeoutError:
            self.counters["idle_closed"] += 1
            return False
        connection.set("head")
        deadline = asyncio.get_running_loop().time() + self.config.request_deadline_s
        request: _Request | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline):  # head and body: a slow sender cannot hold the connection
                    try:
                        head = first + await reader.readuntil(b"\r\n\r\n")
                    except asyncio.LimitOverrunError:
                        raise _HTTPError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large",
                                         f"request head exceeds {MAX_HEAD_BYTES} bytes", close=True) from None
                    request = _parse_head(head)
                    self._check_host(request)
                    self._authorize(request)
                    connection.set("busy")  # authenticated: from here on the slot is not given away
                    routed = await self._read_request(request, reader, writer)
            except TimeoutError:
                self.counters["deadline"] += 1
                what = "head" if request is None else "body"
                self._log(logging.WARNING, "request_deadline", "closed %s: request %s not complete within %.3g s", peer, what, self.config.request_deadline_s)
                await self._reply_error(writer, _HTTPError(HTTPStatus.REQUEST_TIMEOUT, "request_deadline",
                                                           f"request {what} not received within {self.config.request_deadline_s} s", close=True))
                return False
            if isinstance(routed, tuple):
                status, content_type, body = routed
            else:  # the model's time is not the client's: request_timeout_s, not the receive deadline
                status, content_type, body = HTTPStatus.OK, CONTENT_TYPE, await self._submit(*routed)
        except _HTTPError as error:
            self.counters["rejected"] += 1
            where = f"{request.method} {request.path}" if request is not None else "request"
            self._log(logging.WARNING, error.code, "rejected %s from %s: %d %s: %s", where, peer, error.status.value, error.code, error.message)
            keep = request is not None and request.keep_alive and not error.close
            await self._reply_error(writer, error, keep_alive=keep)
            return keep
        except (ConnectionError, asyncio.IncompleteReadError):
            return False
        except Exception as error:  # a bug must not kill the server, and the client gets an answer
            logger.exception("internal error answering %s", peer)
            await self._reply_error(writer, _HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", f"{type(error).__name__}: {error}", close=True))
            return False
        self.counters["served"] += 1
        keep = request.keep_alive
        await self._write(writer, status, content_type, body, keep)
        return keep

    async def _write(self, writer: asyncio.StreamWriter, status: HTTPStatus, content_type: str, body: bytes,
                     keep_alive: bool, extra_headers: str = "") -> None:
        connection = "" if keep_alive else "Connection: close\r\n"
        head = (f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n{extra_headers}{connection}\r\n")
        writer.write(head.encode("latin-1") + body)  # one write: one segment for small replies
        async with asyncio.timeout(self.config.request_deadline_s):  # a client that never reads cannot pin memory
            await writer.drain()

    async def _reply_error(self, writer: asyncio.StreamWriter, error: _HTTPError, keep_alive: bool = False) -> None:
        extra = 'WWW-Authenticate: Bearer\r\n' if error.status == HTTPStatus.UNAUTHORIZED else ""
        body = error_body(error.status, error.code, error.message, **error.extra)
        try:
            await self._write(writer, error.status, "application/json", body, keep_alive, extra)
        except (ConnectionError, TimeoutError, OSError):
            pass

    # ------------------------------------------------------------------ requests

    def _check_host(self, request: _Request) -> None:
        if self._allowed_hosts is None:
            return
        host = request.headers.get("host")
        if host is None:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_host", "missing Host header", close=True)
        if _host_name(host) not in self._allowed_hosts:
            raise _HTTPError(HTTPStatus.FORBIDDEN, "bad_host",
                             f"Host {host!r} is not allowed (allowed: {sorted(self._allowed_hosts)}; set --server.allowed_hosts "
                             "or a token)", close=True)

    def _authorize(self, request: _Request) -> None:
        token = self.config.token
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            raise _HTTPError(HTTPStatus.UNAUTHORIZED, "unauthorized", "missing or wrong 'Authorization: Bearer <token>' header", close=True)

    async def _read_request(
        self, request: _Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[HTTPStatus, str, bytes] | list:
        """A GET's reply, or ``[observation, task]`` of a checked predict request (its body read here)."""
        if "transfer-encoding" in request.headers:
            raise _HTTPError(HTTPStatus.NOT_IMPLEMENTED, "transfer_encoding", "Transfer-Encoding is not supported; send Content-Length", close=True)
        if request.method == "GET":
            if request.path == "/v1/health":
                return HTTPStatus.OK, "application/json", b'{"status":"ok"}'
            if request.path == "/v1/spec":
                return HTTPStatus.OK, "application/json", json.dumps(self.spec.to_json()).encode()
            raise _HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint GET {request.path}; try /v1/health, /v1/spec")
        if request.method != "POST":
            raise _HTTPError(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", f"method {request.method} not supported (GET, POST)", close=True)
        if request.path != "/v1/predict":
            raise _HTTPError(HTTPStatus.NOT_FOUND, "not_found", f"no endpoint POST {request.path}; try /v1/predict", close=True)
        if request.headers.get("content-type") != CONTENT_TYPE:
            raise _HTTPError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "bad_content_type", f"Content-Type must be {CONTENT_TYPE}", close=True)
        length_text = request.headers.get("content-length")
        if length_text is None:
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "length_required", "Content-Length (bytes) is required", close=True)
        if not length_text.isascii() or not length_text.isdigit() or len(length_text) > 12:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_content_length", f"Content-Length {length_text[:40]!r} is not a byte count", close=True)
        length = int(length_text)
        if length > self.max_request_bytes:
            raise _HTTPError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "too_large",
                f"body of {length} bytes exceeds {self.max_request_bytes} (the policy's inputs need {self.spec.input_nbytes})",
                close=True,
            )
        if request.headers.get("expect", "").lower() == "100-continue":  # curl sends this for large bodies
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            request.body = await reader.readexactly(length)
        except asyncio.IncompleteReadError as error:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "truncated", f"body ended after {len(error.partial)} of {length} bytes", close=True) from None
        try:
            header, observation = decode_frame(request.body)
            task = header.get("task")
            if task is not None and not isinstance(task, str):
                raise ProtocolError(f"header 'task' must be a string, got {type(task).__name__}")
            self.spec.validate(observation)
        except ObservationError as error:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_observation", str(error)) from None
        except ValueError as error:  # ProtocolError and any other malformed-input path
            raise _HTTPError(HTTPStatus.BAD_REQUEST, "bad_frame", str(error)) from None
        return [observation, task]

    async def _submit(self, observation: dict[str, np.ndarray], task: str | None) -> bytes:
        if self._in_flight > self.config.max_queue:  # one running + max_queue waiting
            raise _HTTPError(HTTPStatus.SERVICE_UNAVAILABLE, "busy", f"{self.config.max_queue} predictions already queued; retry later")
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        future: Future = self._executor.submit(self._predict, observation, task, time.perf_counter())
        future.add_done_callback(lambda _: self._call_in_loop(loop, self._finished))
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            future.cancel()  # only drops it if still queued; a running prediction finishes, its answer is discarded
            raise _HTTPError(HTTPStatus.GATEWAY_TIMEOUT, "timeout", f"no prediction within {self.config.request_timeout_s} s") from None
        except UnsafeActionError as error:
            self._log(logging.ERROR, "unsafe_action", "refused to send an action chunk: %s: %s", error.reason, error)
            raise _HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, "unsafe_action", str(error), reason=error.reason) from None
        except ObservationError as error:
            raise _HTTPError(HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_observation", str(error)) from None
        except _HTTPError:
            raise
        except Exception as error:
            self._log(logging.ERROR, "inference_failed", "prediction failed: %s: %s", type(error).__name__, error)
            raise _HTTPError(HTTPStatus.INTERNAL_SERVER_ERROR, "inference_failed", f"{type(error).__name__}: {error}") from None

    @staticmethod
    def _call_in_loop(loop: asyncio.AbstractEventLoop, fn: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server shut down, nothing to count
            loop.call_soon_threadsafe(fn)

    def _finished(self) -> None:
        self._in_flight -= 1

    def _predict(self, observation: dict[str, np.ndarray], task: str | None, enqueued: float) -> bytes:
        """Worker thread: run the model, check the chunk (never send NaN/inf or a wrong shape), encode the reply."""
        started = time.perf_counter()
        action = self.predictor.predict_chunk(observation, task)
        done = time.perf_counter()
        action = self._shape_guard.check(action)  # the predictor may not be a PolicyRuntime with its own guard
        timing = {"queue": (started - enqueued) * 1e3, "inference": (done - started) * 1e3}
        return encode_frame({"action": action}, timing_ms=timing)

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "open_connections": len(self._connections), "in_flight": self._in_flight}


__all__ = ["MAX_HEAD_BYTES", "PolicyServer", "ServerConfig", "TOKEN_ENV", "is_loopback"]
