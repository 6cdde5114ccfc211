"""`endofuse serve`: one Ray Serve application segmenting for many rooms (docs/serving.md).

    endofuse serve --replicas 1 --max-batch 8                        # a local Ray on this machine
    endofuse serve --address auto --autoscale 1,4 --host 0.0.0.0     # join a Ray cluster, expose the port
    endofuse run --wli 0 --nbi 1 --server http://gpu-box:8000 --fallback local

Binds 127.0.0.1 unless --host says otherwise. Ctrl-C or SIGTERM, also while it starts, stops the local Ray
it started (or shuts Ray Serve down on a cluster joined with --address) and exits 130 / 143 within seconds.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from endofuse.errors import EndofuseError, InvalidOptionError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from endofuse.realtime.engines.factory import BACKENDS, MODEL_CHOICES

    parser.add_argument("--checkpoint", default=None, help="a .pt checkpoint or .onnx/.xml model (default: the "
                                                           "bundled demo weights)")
    parser.add_argument("--model", default="tiny", choices=MODEL_CHOICES, help="model config (default tiny)")
    parser.add_argument("--engine", default="auto", choices=BACKENDS, help="inference backend (default auto)")
    parser.add_argument("--device", default=None, help="cpu or cuda[:i] inside each replica")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="inference threads per replica (default: its --replica-cpus, rounded up)")
    parser.add_argument("--replicas", type=int, default=1, metavar="N", help="replicas of the model (default 1)")
    parser.add_argument("--autoscale", default=None, metavar="MIN,MAX",
                        help="let Ray Serve scale between MIN and MAX replicas instead of --replicas")
    parser.add_argument("--replica-cpus", type=float, default=1.0, metavar="N",
                        help="CPUs Ray reserves per replica (placement; default 1)")
    parser.add_argument("--replica-gpus", type=float, default=0.0, metavar="N",
                        help="GPUs Ray reserves per replica: replicas then run only on GPU nodes (default 0)")
    parser.add_argument("--max-batch", type=int, default=8, metavar="N",
                        help="most requests from different rooms run as one batch (default 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=2.0, metavar="MS",
                        help="longest wait for a batch to fill (default 2)")
    parser.add_argument("--max-queued", type=int, default=64, metavar="N",
                        help="requests waiting for a replica beyond this are refused at once with 503 (default 64)")
    parser.add_argument("--host", default="127.0.0.1", help="address of the HTTP ingress (default 127.0.0.1; "
                                                            "0.0.0.0 exposes it to the network)")
    parser.add_argument("--port", type=int, default=8000, help="port of the HTTP ingress (default 8000)")
    parser.add_argument("--ingress", default="haproxy", choices=("haproxy", "proxy"),
                        help="HTTP ingress of a local Ray: haproxy (Ray Serve's HAProxy, forwarding straight to the "
                             "replicas; default) or proxy (Ray's Python HTTP proxy). A cluster joined with --address "
                             "keeps its own (docs/serving.md)")
    parser.add_argument("--address", default=None,
                        help="join this Ray cluster (e.g. auto or ray://head:10001); default: start a local Ray")
    parser.add_argument("--token", default=os.environ.get("ENDOFUSE_TOKEN"),
                        help="require 'Authorization: Bearer TOKEN' on every request (default: $ENDOFUSE_TOKEN)")


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        low, high = (int(v) for v in text.split(","))
    except ValueError:
        raise InvalidOptionError(f"--autoscale {text!r}: give MIN,MAX replicas, e.g. 1,4") from None
    if not 0 <= low <= high or high < 1:
        raise InvalidOptionError(f"--autoscale {text!r}: need 0 <= MIN <= MAX and MAX >= 1")
    return low, high


def config_from_args(args: argparse.Namespace):
    """The checked ServeConfig (one line per bad value, before Ray starts)."""
    from endofuse.realtime.serve.service import EngineOptions, ServeConfig

    for flag, value, least in (("--replicas", args.replicas, 1), ("--max-batch", args.max_batch, 1),
                               ("--max-queued", args.max_queued, 1)):
        if value < least:
            raise InvalidOptionError(f"{flag} must be >= {least}, got {value}")
    if args.batch_wait_ms < 0 or args.replica_cpus < 0 or args.replica_gpus < 0:
        raise InvalidOptionError("--batch-wait-ms, --replica-cpus and --replica-gpus must be >= 0")
    if not 0 < args.port < 65536:
        raise InvalidOptionError(f"--port {args.port} is not a valid TCP port")
    if args.threads is not None and args.threads < 1:
        raise InvalidOptionError(f"--threads must be >= 1, got {args.threads}")
    engine = EngineOptions(args.checkpoint, args.model, args.engine, args.device, args.threads)
    return ServeConfig(engine=engine, replicas=args.replicas, autoscale=parse_autoscale(args.autoscale),
                       max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, max_queued=args.max_queued,
                       replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus, token=args.token)


class _Interrupted(BaseException):
    """A signal while Serve deploys: abandons `serve.run`'s wait for the replicas (a BaseException, so
    none of Ray's `except Exception` blocks can swallow it)."""


def main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.checkpoint is not None and not os.path.isfile(args.checkpoint):
        raise EndofuseError(f"--checkpoint {args.checkpoint}: no such file")
    from endofuse.checks import check_listen_address

    check_listen_address(args.host, args.port)  # before Ray's slow import, in one line
    from endofuse.realtime.serve.service import local_ray_environment

    if args.address is None:  # Ray and Serve read these when imported and when their processes start
        local_ray_environment(args.ingress)
    try:
        import ray

        from endofuse.realtime.serve import app
    except ModuleNotFoundError as exc:
        raise EndofuseError(f"endofuse serve needs {exc.name}: pip install 'endofuse[serve]'") from None
    stop = threading.Event()
    received: list[int] = []
    deploying = [False]

    def on_signal(signum, frame) -> None:
        if not received:
            received.append(signum)
        stop.set()
        if deploying[0]:  # serve.run waits for healthy replicas: seconds, minutes on a busy machine
            deploying[0] = False
            raise _Interrupted

    def take_signals() -> dict:
        return {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}

    # ours before ray.init (a Ctrl-C there was once lost inside it; a SIGTERM ended the process with
    # Ray's sys.exit(15) and no cleanup), and again after it: ray.init installs its own SIGTERM handler
    previous = take_signals()
    try:
        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, logging_level="warning")
        take_signals()
        try:
            if not stop.is_set():
                deploying[0] = True
                url = app.start(config, args.host, args.port)
                deploying[0] = False
                replicas = f"{config.autoscale[0]}-{config.autoscale[1]}" if config.autoscale else config.replicas
                ingress = args.ingress if args.address is None else "the cluster's"
                print(f"endofuse serve: {url} ({ingress} ingress, {replicas} replica(s), batches of up to "
                      f"{config.max_batch}, token {'required' if config.token else 'off'}; Ctrl+C stops)",
                      flush=True)
            while not stop.wait(0.5):
                pass
        except _Interrupted:
            pass
        finally:
            deploying[0] = False
            shutdown(ray, app, joined=args.address is not None)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    signum = received[0] if received else signal.SIGINT
    print(f"endofuse serve: stopped ({signal.Signals(signum).name})", file=sys.stderr)
    return 128 + signum


def shutdown(ray, app, joined: bool) -> None:
    """Stops serving within seconds.

    A local Ray that `endofuse serve` started goes down whole with `ray.shutdown()` (its controller, proxy
    and replicas with it). `serve.shutdown()` first would wait for the controller's graceful shutdown, up
    to its fixed 30 s when Ray retries that call on the controller it has just killed (seen: SIGTERM took
    ~30 s). On a cluster joined with --address, the cluster outlives this process: Serve is shut down
    there first (as `app.stop`), then this process disconnects.
    """
    if joined:
        app.stop()
    ray.shutdown()
