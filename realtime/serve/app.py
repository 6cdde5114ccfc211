"""The Ray Serve application behind `endofuse serve`: one deployment that is its own HTTP ingress.

Requests from every room arrive at Ray's HTTP proxy, go to a replica, are checked there (token, shape,
dtype, size) and wait in `@serve.batch` until a batch is full or `batch_wait_ms` passed; the batch runs
as one engine call per graph path (`service.SegmentService`). Ray bounds the queue: past
`max_queued_requests` the proxy answers 503 at once. Replica placement, restarts of failed replicas,
autoscaling and the metrics endpoint are Ray's.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

from ray import serve
from ray.util import metrics
from starlette.requests import Request
from starlette.responses import Response

from endofuse.realtime.serve.service import EngineOptions, SegmentService, ServeConfig, clock
from endofuse.realtime.serve.wire import (
    HEALTH_ROUTE,
    NODE,
    RECEIVE_MS,
    SEGMENT_ROUTE,
    WireError,
    check_token,
    decode_request,
    encode_response,
    expected_bytes,
)

APP_NAME = "endofuse"


@serve.deployment(name="segment")
class SegmentDeployment:
    def __init__(self, engine: dict, max_batch: int, batch_wait_ms: float, token: str | None) -> None:
        import ray

        self.service = SegmentService(EngineOptions(**engine).open())
        self.service.engine.warmup(batch_size=1)
        self.token = token
        self.node = ray.get_runtime_context().get_node_id()[:12]
        self.segment.set_max_batch_size(max_batch)
        self.segment.set_batch_wait_timeout_s(batch_wait_ms / 1000)
        # endofuse's timings beside Ray's own metrics (the same Prometheus endpoint)
        boundaries = [1, 2, 5, 10, 20, 50, 100, 200, 500]
        self.queue_ms = metrics.Histogram("endofuse_queue_ms", "wait before compute", boundaries=boundaries)
        self.compute_ms = metrics.Histogram("endofuse_compute_ms", "engine time per batch", boundaries=boundaries)
        self.batch_size = metrics.Histogram("endofuse_batch_size", "requests per batch",
                                            boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 32])
        self.rejected = metrics.Counter("endofuse_rejected", "requests refused", tag_keys=("status",))

    async def __call__(self, request: Request) -> Response:
        """The HTTP ingress (what rooms call)."""
        status, headers, body = await self._answer(request.method, request.url.path, request.headers,
                                                   request.body)
        return Response(body, status_code=status, headers=headers)

    async def handle_call(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        """The same answer through a Ray `DeploymentHandle` (only for callers inside the cluster;
        benchmarks/rooms.py compares it with the HTTP ingress)."""

        async def read() -> bytes:
            return body

        return await self._answer(method, path, {k.lower(): v for k, v in headers.items()}, read)

    async def _answer(self, method: str, path: str, headers, read_body) -> tuple[int, dict, bytes]:
        arrived = clock()
        path = path.rstrip("/")
        try:
            check_token(headers, self.token)
            if method == "GET" and path.endswith(HEALTH_ROUTE):
                body = json.dumps(self.service.health() | {"node": self.node}).encode()
                return 200, {"content-type": "application/json"}, body
            if method != "POST" or not path.endswith(SEGMENT_ROUTE):
                raise WireError(404, f"no route {method} {path}: POST {SEGMENT_ROUTE} or GET {HEALTH_ROUTE}")
            size = expected_bytes(headers, self.service.engine.input_size)
            declared = int(headers.get("content-length", size))
            if declared > size:  # refused before the body is read
                raise WireError(413, f"body of {declared} bytes is larger than the {size} its headers declare")
            body = await read_body()
            received = clock()  # the body can stream in from the proxy after the headers
            item = decode_request(headers, body, self.service.engine.input_size, arrived)
            result = await self.segment(item)
            if isinstance(result, WireError):
                raise result
        except WireError as exc:
            self.rejected.inc(tags={"status": str(exc.status)})
            return exc.status, {"content-type": "text/plain"}, (str(exc) + "\n").encode()
        logits, timings = result
        timings |= {NODE: self.node, RECEIVE_MS: f"{(received - arrived) * 1000:.2f}"}
        return 200, *encode_response(logits, timings, item.answer_dtype)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def segment(self, items: list) -> list:
        # in a worker thread: the replica keeps accepting (and batching) requests while the engine runs
        results = await asyncio.to_thread(self.service.run_batch, items)
        for result in results:
            if not isinstance(result, WireError):
                _, timings = result
                self.queue_ms.observe(float(timings["x-endofuse-queue-ms"]))
        if any(not isinstance(r, WireError) for r in results):
            served = next(r for r in results if not isinstance(r, WireError))[1]
            self.compute_ms.observe(float(served["x-endofuse-compute-ms"]))
            self.batch_size.observe(float(served["x-endofuse-batch-size"]))
        return results


def build_app(config: ServeConfig):
    """The bound Ray Serve application for `serve.run`."""
    options = {"max_ongoing_requests": max(2 * config.max_batch, 4), "max_queued_requests": config.max_queued,
               "ray_actor_options": {"num_cpus": config.replica_cpus, "num_gpus": config.replica_gpus}}
    if config.autoscale is not None:
        low, high = config.autoscale
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high,
                                         "target_ongoing_requests": config.max_batch}
    else:
        options["num_replicas"] = config.replicas
    return SegmentDeployment.options(**options).bind(asdict(config.replica_engine()), config.max_batch,
                                                     config.batch_wait_ms, config.token)


def start(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Deploys on the Ray cluster this process is connected to (ray.init first); returns the base URL."""
    serve.start(http_options={"host": host, "port": port}, proxy_location="HeadOnly")
    serve.run(build_app(config), name=APP_NAME, route_prefix="/",
              logging_config={"enable_access_log": False, "log_level": "WARNING"})
    return f"http://{host}:{port}"


def stop() -> None:
    """Shuts Ray Serve down (the application, its replicas and the proxy); the Ray cluster stays."""
    serve.shutdown()
