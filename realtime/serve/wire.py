"""The wire format between a room and `endofuse serve`: raw tensor bytes over HTTP, described in headers.

A request is one preprocessed WLI frame, or a WLI/NBI pair, at the model's input size:

    POST /segment
    X-Endofuse-Shape: 2,3,160,160      inputs (1 = WLI only, 2 = WLI + NBI), channels, height, width
    X-Endofuse-Dtype: uint8            uint8 (x 255, rounded), float16 or float32 RGB in [0, 1]
    X-Endofuse-Deadline-Ms: 100        drop it unless compute starts within this many ms of its arrival
    Authorization: Bearer TOKEN        only when the server was started with --token
    body: the C-order bytes, WLI first

The answer is the logits, (1, classes, H, W), in float32 for a float32 request and in float16 otherwise
(half the bytes; the input was already rounded), with the server's timings in headers. Nothing is ever
unpickled: a body is only read as the declared dtype and shape, after its size has been checked.
"""
from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

import numpy as np

SHAPE = "x-endofuse-shape"
DTYPE = "x-endofuse-dtype"
DEADLINE = "x-endofuse-deadline-ms"
AUTHORIZATION = "authorization"
# the server's per-request timings (response headers)
QUEUE_MS = "x-endofuse-queue-ms"  # from the request's arrival at the replica to its batch's start
RECEIVE_MS = "x-endofuse-receive-ms"  # of which: reading the body
BATCH_SIZE = "x-endofuse-batch-size"
COMPUTE_MS = "x-endofuse-compute-ms"
NODE = "x-endofuse-node"

SEGMENT_ROUTE = "/segment"
HEALTH_ROUTE = "/health"
WIRE_DTYPES = {"uint8": np.uint8, "float16": np.float16, "float32": np.float32}
# a room's default: a quarter of float32's bytes, and the least work for the server's ingress
# (benchmarks/rooms.py); the rounding is at most half an 8-bit camera step
DEFAULT_WIRE_DTYPE = "uint8"
ANSWER_DTYPES = {"float32": np.float32, "float16": np.float16}
MAX_DEADLINE_MS = 10_000.0


class WireError(Exception):
    """A request the server refuses: `status` is the HTTP code, the message one line saying why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class SegmentRequest:
    """A decoded request: float32 (1, 3, H, W) inputs, NBI None for the WLI-only path."""

    wli: np.ndarray
    nbi: np.ndarray | None
    deadline_ms: float
    arrived: float = 0.0  # server clock (time.monotonic) when it arrived
    answer_dtype: str = "float32"  # float32 answers float32 requests, float16 the rest


def encode_request(wli: np.ndarray, nbi: np.ndarray | None, dtype: str = DEFAULT_WIRE_DTYPE,
                   deadline_ms: float = 100.0, token: str | None = None) -> tuple[dict[str, str], bytes]:
    """(headers, body) for one preprocessed pair: `wli`/`nbi` float (1, 3, H, W) or (3, H, W) in [0, 1]."""
    if dtype not in WIRE_DTYPES:
        raise ValueError(f"wire dtype {dtype!r}: choose one of {', '.join(WIRE_DTYPES)}")
    inputs = [np.asarray(wli)] + ([] if nbi is None else [np.asarray(nbi)])
    stacked = np.stack([x.reshape(x.shape[-3:]) for x in inputs])
    if dtype == "uint8":
        stacked = np.clip(np.rint(stacked * 255.0), 0, 255).astype(np.uint8)
    else:
        stacked = stacked.astype(WIRE_DTYPES[dtype], copy=False)
    headers = {SHAPE: ",".join(map(str, stacked.shape)), DTYPE: dtype, DEADLINE: f"{deadline_ms:g}",
               "content-type": "application/octet-stream"}
    if token:
        headers[AUTHORIZATION] = f"Bearer {token}"
    return headers, np.ascontiguousarray(stacked).tobytes()


def check_token(headers, token: str | None) -> None:
    """401 unless the request carries the server's token (constant-time compare); no token set: all pass."""
    if not token:
        return
    given = headers.get(AUTHORIZATION, "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise WireError(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' (endofuse run --token)")


def expected_bytes(headers, input_size: tuple[int, int]) -> int:
    """The body size the headers declare, checked against the model's input before the body is read."""
    dtype = headers.get(DTYPE)
    if dtype not in WIRE_DTYPES:
        raise WireError(415, f"{DTYPE} is {dtype!r}: send one of {', '.join(WIRE_DTYPES)}")
    try:
        shape = tuple(int(v) for v in headers.get(SHAPE, "").split(","))
    except ValueError:
        raise WireError(400, f"{SHAPE} {headers.get(SHAPE)!r} is not a comma-separated shape, "
                             f"e.g. 2,3,{input_size[0]},{input_size[1]}") from None
    if len(shape) != 4 or shape[0] not in (1, 2) or shape[1] != 3 or shape[2:] != tuple(input_size):
        raise WireError(422, f"shape {shape} does not fit this model: send (1 or 2, 3, {input_size[0]}, "
                             f"{input_size[1]}) (WLI [+ NBI], RGB, the model's input size)")
    return math.prod(shape) * np.dtype(WIRE_DTYPES[dtype]).itemsize


def decode_request(headers, body: bytes, input_size: tuple[int, int], arrived: float = 0.0) -> SegmentRequest:
    """A checked SegmentRequest from the headers and body, or WireError (4xx, one line)."""
    size = expected_bytes(headers, input_size)
    if len(body) != size:
        raise WireError(413 if len(body) > size else 400,
                        f"body has {len(body)} bytes but {SHAPE} and {DTYPE} declare {size}")
    try:
        deadline_ms = float(headers.get(DEADLINE, ""))
    except ValueError:
        raise WireError(400, f"{DEADLINE} {headers.get(DEADLINE)!r} is not a number of milliseconds") from None
    if not 0 < deadline_ms <= MAX_DEADLINE_MS:
        raise WireError(400, f"{DEADLINE} {deadline_ms:g} is outside (0, {MAX_DEADLINE_MS:g}] ms")
    dtype = WIRE_DTYPES[headers[DTYPE]]
    shape = tuple(int(v) for v in headers[SHAPE].split(","))
    inputs = np.frombuffer(body, dtype).reshape(shape)
    inputs = inputs.astype(np.float32) / 255.0 if dtype == np.uint8 else inputs.astype(np.float32)
    if not np.isfinite(inputs).all():
        raise WireError(422, "inputs hold NaN or infinity: send preprocessed frames in [0, 1]")
    answer = "float32" if dtype == np.float32 else "float16"
    return SegmentRequest(inputs[0:1], inputs[1:2] if shape[0] == 2 else None, deadline_ms, arrived, answer)


def encode_response(logits: np.ndarray, timings: dict[str, str], dtype: str = "float32"
                    ) -> tuple[dict[str, str], bytes]:
    """(headers, body) of an answer: logits (1, classes, H, W) in `dtype` plus the server's timings."""
    logits = np.ascontiguousarray(logits, ANSWER_DTYPES[dtype])
    headers = {SHAPE: ",".join(map(str, logits.shape)), DTYPE: dtype,
               "content-type": "application/octet-stream", **timings}
    return headers, logits.tobytes()


def decode_response(headers, body: bytes) -> np.ndarray:
    """The float32 logits of an answer (checked against its declared dtype and shape)."""
    dtype = ANSWER_DTYPES.get(headers.get(DTYPE))
    if dtype is None:
        raise ValueError(f"server answered with {DTYPE} {headers.get(DTYPE)!r}, expected float32 or float16")
    shape = tuple(int(v) for v in headers.get(SHAPE, "").split(","))
    if len(body) != math.prod(shape) * np.dtype(dtype).itemsize:
        raise ValueError(f"server answered {len(body)} bytes for logits of shape {shape}")
    return np.frombuffer(body, dtype).reshape(shape).astype(np.float32)
