"""Robot-side client of the policy server: standard library + numpy only (no torch, no lerobot).

This file can be copied onto a robot computer on its own together with ``protocol.py``::

    client = PolicyClient("10.0.0.5", 8765, token=os.environ["VLA_DINO_SERVER_TOKEN"])
    spec = client.spec()                       # expected input names, dtypes, shapes
    chunk = client.predict_chunk({"observation.images.front": rgb_uint8_hwc,
                                  "observation.state": state_float32})   # (T, action_dim)
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Mapping

import numpy as np

from vla_dino.runtime.protocol import CONTENT_TYPE, decode_frame, encode_frame


class PolicyServerError(RuntimeError):
    """The server refused or failed a request; ``status`` and ``code`` say why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class PolicyClient:
    """Keep-alive HTTP connection to a :class:`~vla_dino.runtime.server.PolicyServer`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8765, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
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
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if attempt == 1:
                    raise
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            if response.status != 200:
                try:
                    error = json.loads(data)["error"]
                    raise PolicyServerError(response.status, error["code"], error["message"])
                except (ValueError, KeyError, TypeError):
                    raise PolicyServerError(response.status, "http_error", data[:200].decode("utf-8", "replace")) from None
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
        return arrays["action"]
