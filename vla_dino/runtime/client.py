"""Robot-side client of the policy server: standard library + numpy only (no torch, no lerobot).

This file can be copied onto a robot computer on its own together with ``protocol.py``::

    client = PolicyClient("10.0.0.5", 8765, token=os.environ["VLA_DINO_SERVER_TOKEN"],
                          tls=True, ca_file="server-cert.pem")   # when the server has --server.tls_cert
    spec = client.spec()                       # expected input names, dtypes, shapes
    chunk = client.predict_chunk({"observation.images.front": rgb_uint8_hwc,
                                  "observation.state": state_float32})   # (T, action_dim)
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Mapping

import numpy as np

from vla_dino.runtime.protocol import CONTENT_TYPE, decode_frame, encode_frame


class PolicyServerError(RuntimeError):
    """The server refused or failed a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.reason = reason  # for code "unsafe_action": non_finite | out_of_bounds | bad_shape


class PolicyClient:
    """Keep-alive HTTP connection to a :class:`~vla_dino.runtime.server.PolicyServer`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        token: str | None = None,
        timeout_s: float = 10.0,
        tls: bool = False,
        ca_file: str | None = None,
    ) -> None:
        """``tls=True`` speaks HTTPS, verifying the server against ``ca_file`` (e.g. its self-signed
        certificate) or the system's CAs; the certificate must name ``host``."""
        self.host, self.port, self.timeout_s = host.strip("[]"), port, timeout_s
        if ca_file is not None and not tls:
            raise ValueError("PolicyClient: ca_file is only used with tls=True")
        self._ssl = ssl.create_default_context(cafile=ca_file) if tls else None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None
        self.last_timing_ms: dict[str, float] = {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None) -> tuple[int, str, bytes]:
        headers = {**self._headers, **(headers or {})}
        for attempt in range(2):  # one reconnect when the server closed an idle keep-alive connection
            if self._conn is None:
                if self._ssl is not None:
                    self._conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s, context=self._ssl)
                else:
                    self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                try:
                    self._conn.connect()
                except BaseException:
                    self.close()
                    raise
                # http.client sends the head and the body in two writes: without NODELAY, Nagle holds the body
                # until the server's delayed ACK (~20-40 ms per request on Linux loopback).
                self._conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 1:
                    raise
                continue
            except BaseException:  # timeout, TLS error, ...: the connection is mid-request, never reuse it
                self.close()
                raise
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            if response.status != 200:
                try:
                    error = json.loads(data)["error"]
                    code, message, reason = error["code"], error["message"], error.get("reason")
                except (ValueError, KeyError, TypeError):
                    raise PolicyServerError(response.status, "http_error", data[:200].decode("utf-8", "replace")) from None
                raise PolicyServerError(response.status, code, message, reason)
            return response.status, response.getheader("Content-Type", ""), data
        raise AssertionError("unreachable")

    def health(self) -> dict:
        return json.loads(self._request("GET", "/v1/health")[2])

    def spec(self) -> dict:
        """Expected inputs (``name``, ``dtype``, ``shape``), ``action_dim`` and ``chunk_size``."""
        return json.loads(self._request("GET", "/v1/spec")[2])

    def predict_chunk(self, observation: Mapping[str, np.ndarray], task: str | None = None) -> np.ndarray:
        """Action chunk ``(T, action_dim)`` float32 for one raw observation."""
        header = {"task": task} if task is not None else {}
        body = encode_frame(observation, **header)
        _, content_type, data = self._request("POST", "/v1/predict", body, {"Content-Type": CONTENT_TYPE})
        if content_type != CONTENT_TYPE:
            raise PolicyServerError(200, "bad_reply", f"unexpected reply Content-Type {content_type!r}")
        reply, arrays = decode_frame(data)
        self.last_timing_ms = reply.get("timing_ms", {})
        action = arrays.get("action")
        # The server refuses such chunks itself; checked again here so that no server version can slip one through.
        if action is None or action.ndim != 2 or action.shape[0] < 1 or not np.isfinite(action).all():
            shape = None if action is None else action.shape
            raise PolicyServerError(200, "unsafe_action", f"reply action of shape {shape} is missing, not (T, action_dim) or not finite", "non_finite")
        return action
