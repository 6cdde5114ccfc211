"""Option values checked once for every command (--device, --fps, --threads): accepted, or one line saying why not."""
from __future__ import annotations

import errno
import math
import os
import re
import socket

from endofuse.errors import EndofuseError

DEVICE_FORMS = "cpu, cuda or cuda:N"


def check_device(spec: str | None, what: str = "--device", torch_cuda: bool = True) -> str | None:
    """`spec` normalised ("cuda" stays "cuda"); EndofuseError when it is malformed or names a missing GPU.

    None (the engine's own choice) passes through. `torch_cuda=False` checks the form only (an
    engine such as ONNX Runtime finds its GPU itself, without torch).
    """
    if spec is None:
        return None
    text = str(spec).strip().lower()
    match = re.fullmatch(r"(cpu|cuda)(?::(\d+))?", text)
    if match is None or (match.group(1) == "cpu" and match.group(2) is not None):
        raise EndofuseError(f"{what} {spec!r}: not a device; use {DEVICE_FORMS}")
    if match.group(1) == "cuda" and torch_cuda:
        import torch

        if not torch.cuda.is_available():
            build = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise EndofuseError(f"{what} {spec!r}: {build} (torch {torch.__version__}); use --device cpu")
        index = int(match.group(2) or 0)
        if index >= torch.cuda.device_count():
            raise EndofuseError(f"{what} {spec!r}: only {torch.cuda.device_count()} CUDA device(s) visible; "
                                f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return text


def check_fps(value: float, flag: str = "--fps") -> float:
    """A finite frame rate > 0 (inf would hang a video writer; 0, negative and nan mean nothing)."""
    if not math.isfinite(value) or value <= 0:
        raise EndofuseError(f"{flag} must be a finite number > 0 (frames per second), got {value}")
    return value


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_threads(value: int | None, flag: str = "--threads") -> int | None:
    """A thread count in 1..usable_cpus(); None (the engine's own choice) passes through.

    More threads than CPUs never runs faster, and an absurd count (10000) makes an engine start
    that many OS threads, so it is refused rather than capped: the user learns the range.
    """
    if value is None:
        return None
    limit = usable_cpus()
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise EndofuseError(f"{flag} {value}: must be a whole number from 1 to {limit} "
                            f"(the CPUs this process may use)")
    return value


THREAD_FLAGS = {"threads": "--threads", "workers": "--workers"}


def check_thread_options(args) -> None:
    """Every thread-count flag a command has (`--threads`, `--workers`), checked before the command runs."""
    for name, flag in THREAD_FLAGS.items():
        check_threads(getattr(args, name, None), flag)


def check_listen_address(host: str, port: int) -> None:
    """`host:port` can be listened on here: an address of this machine, and the port free."""
    try:
        # numeric only (no DNS lookup for a typo); "localhost" comes from the hosts file
        flags = 0 if host == "localhost" else socket.AI_NUMERICHOST
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=flags)
    except socket.gaierror:
        raise EndofuseError(f"--host {host!r} is not an IP address; use 127.0.0.1 (this machine only) or an "
                            "address of one of this machine's network interfaces") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is not "in use"
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise EndofuseError(f"--port {port} is already in use on {host}: stop the other server or choose "
                                    "another --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise EndofuseError(f"--host {host} is not an address of this machine: use 127.0.0.1 or one of "
                                    "its own interface addresses") from None
            raise EndofuseError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
