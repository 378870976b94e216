"""Wire format between a robot computer and the policy server: no pickle, just numpy.

Requests and replies are HTTP/1.1 bodies of content type ``application/x-vla-dino-frame``::

    uint32 little-endian  n  = length of the JSON header in bytes
    n bytes               header, UTF-8 JSON: {"arrays": [{"name", "dtype", "shape"}, ...], ...}
    payload               each array's raw bytes, C order, little-endian, in header order

Error replies are ``application/json``: ``{"error": {"status", "code", "message"}}`` (plus
``"reason"`` for ``unsafe_action``: ``non_finite``, ``out_of_bounds`` or ``bad_shape``).
Endpoints: ``GET /v1/health``, ``GET /v1/spec`` (JSON: expected inputs, chunk shape),
``POST /v1/predict`` (frame with the observation arrays and optional ``"task"``; reply frame
with array ``"action"`` of shape (T, action_dim) and ``"timing_ms"`` in the header).
Any client that can do HTTP and ``numpy.frombuffer`` can talk to the server.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping

import numpy as np

CONTENT_TYPE = "application/x-vla-dino-frame"
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8
MAX_ARRAYS = 64
WIRE_DTYPES = ("uint8", "float32")  # what observations and actions use; anything else is refused
_LENGTH = struct.Struct("<I")


class ProtocolError(ValueError):
    """A frame that cannot be decoded (message says what is wrong)."""


def encode_frame(arrays: Mapping[str, np.ndarray], **header: object) -> bytes:
    """Header JSON (``arrays`` entries plus ``header`` fields) followed by little-endian array bytes."""
    entries, chunks = [], []
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.name not in WIRE_DTYPES:
            raise ProtocolError(f"array '{name}': dtype {array.dtype} not in {WIRE_DTYPES}")
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        entries.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape)})
        chunks.append(little.tobytes())
    head = json.dumps({**header, "arrays": entries}, separators=(",", ":")).encode()
    return b"".join([_LENGTH.pack(len(head)), head, *chunks])


def decode_frame(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse a frame into (header without ``arrays``, name → array); raise :class:`ProtocolError` when malformed."""
    if len(data) < _LENGTH.size:
        raise ProtocolError(f"frame of {len(data)} bytes is shorter than its 4-byte header length")
    (head_len,) = _LENGTH.unpack_from(data)
    if head_len > MAX_HEADER_BYTES or _LENGTH.size + head_len > len(data):
        raise ProtocolError(f"header length {head_len} exceeds the frame ({len(data)} bytes) or {MAX_HEADER_BYTES}")
    try:
        header = json.loads(data[_LENGTH.size : _LENGTH.size + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not UTF-8 JSON: {error}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise ProtocolError("header must be a JSON object with an 'arrays' list")
    entries = header.pop("arrays")
    offset, arrays = _LENGTH.size + head_len, {}
    if len(entries) > MAX_ARRAYS:
        raise ProtocolError(f"{len(entries)} arrays in one frame; at most {MAX_ARRAYS}")
    for i, entry in enumerate(entries):
        name, dtype, shape = _check_entry(i, entry)
        if name in arrays:
            raise ProtocolError(f"array '{name}' appears twice")
        count = math.prod(shape)  # Python ints: a hostile shape cannot overflow into a negative size
        nbytes = count * np.dtype(dtype).itemsize
        if offset + nbytes > len(data):
            raise ProtocolError(f"array '{name}' {dtype}{list(shape)} needs {nbytes} bytes, payload has {len(data) - offset} left")
        try:
            arrays[name] = np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count, offset=offset).reshape(shape).astype(dtype, copy=False)
        except ValueError as error:  # numpy's own refusal of a layout: still the client's malformed frame
            raise ProtocolError(f"array '{name}': {error}") from None
        offset += nbytes
    if offset != len(data):
        raise ProtocolError(f"{len(data) - offset} bytes after the last array: header and payload disagree")
    return header, arrays


def _check_entry(i: int, entry: object) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise ProtocolError(f"arrays[{i}] must be an object with name, dtype, shape")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"arrays[{i}].name must be a non-empty string")
    if dtype not in WIRE_DTYPES:
        raise ProtocolError(f"array '{name}': dtype {dtype!r} not in {WIRE_DTYPES}")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)
    ):
        raise ProtocolError(f"array '{name}': shape must be a list of at most {MAX_DIMS} non-negative ints, got {shape!r}")
    return name, dtype, tuple(shape)


def error_body(status: int, code: str, message: str, **extra: object) -> bytes:
    """JSON error reply; ``extra`` fields (e.g. ``reason`` of an unsafe action) go inside ``error``."""
    return json.dumps({"error": {"status": int(status), "code": code, "message": message, **extra}}).encode()
