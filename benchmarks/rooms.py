"""The scale curve: N rooms on one `endofuse serve` beside N independent local pipelines, in one run.

    python benchmarks/rooms.py --rooms 1 2 4 8 --seconds 10 --json benchmarks/results/rooms.json

Every room is a live pipeline paced at 30 fps on a ring of synthetic pairs, each in its own process
(all rooms of a point start together). Served: each room preprocesses and overlays in its process and
sends its frames to one server on this machine (Ray Serve's HAProxy ingress, one replica per CPU,
batching across rooms; the room's default pacing, `--request-every auto`). Local:
each room has its own engine (`--threads` each). Per point: frames out per room, the share of frames
drawn with a mask at most 2 frames old, capture-to-overlay latency, the mask's age, rejected and late
requests, the server's batch sizes and the CPU used by the rooms, Ray's HTTP proxy, the replica and
the rest of Ray (the profile of where the CPU goes). A short transport section times one request
through the HTTP ingress (per wire dtype) and through a Ray DeploymentHandle. The plot goes to docs/images/rooms.png.
"""
from __future__ import annotations

import argparse
import http.client
import os
import time
from pathlib import Path

import numpy as np

from _common import add_json_argument, record, report, table

FPS = 30.0
PORT = 18900


def process_role(pid: int, rooms: set[int]) -> str:
    """Which part of the served path a process is: this benchmark (the rooms), Ray's HTTP proxy, the
    replica, or the rest of Ray (controller, raylet, GCS, workers), from its command line."""
    if pid in rooms:
        return "rooms"
    if pid == os.getpid():
        return "benchmark driver"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "ray, other"
    for marker, role in (("ProxyActor", "ray HTTP proxy"), ("ServeReplica", "replica (engine)"),
                         ("ServeController", "ray serve controller"), ("haproxy", "HAProxy ingress")):
        if marker in cmdline:
            return role
    return "ray, other"


def cpu_by_role(rooms: set[int]) -> dict[str, float]:
    """CPU time (user + system, s) of this process and all its descendants (the local Ray and its
    server replica) by role, from Linux's /proc."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))  # ppid, utime + stime
    tree, todo, roles = {}, [os.getpid()], {}
    for pid, (ppid, _) in stats.items():
        tree.setdefault(ppid, []).append(pid)
    while todo:
        pid = todo.pop()
        role = process_role(pid, rooms)
        roles[role] = roles.get(role, 0.0) + stats.get(pid, (0, 0))[1] / os.sysconf("SC_CLK_TCK")
        todo.extend(tree.get(pid, []))
    return roles


def room(spec: dict, seconds: float, ready, measured, results) -> None:
    """One room in its own process (as in a hospital: every room its own machine; threads of one
    process would share one interpreter lock and measure the benchmark, not the path): open the
    engine (local) or the server connection (served), wait for every room, run at 30 fps live."""
    from endofuse.realtime import build_pipeline
    from endofuse.realtime.commands.bench import load_ring
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.serve.client import RemoteEngine, RoomClient

    os.nice(spec["nice"])
    wli, nbi, _ = load_ring("synthetic", 30)
    if spec["path"] == "served":
        engine = RemoteEngine(RoomClient(spec["url"], deadline_ms=spec["deadline_ms"], wire_dtype=spec["wire_dtype"],
                                         max_in_flight=spec["in_flight"], request_every=spec["request_every"]))
    else:
        engine = open_engine(backend=spec["engine"], threads=spec["threads"])
        engine.warmup()
    frames = int(seconds * FPS)
    pipeline = build_pipeline(MemorySource(wli, "wli", FPS, loops=None), MemorySource(nbi, "nbi", FPS, loops=None),
                              engine, live=True, frames=frames, warmup_frames=int(FPS))
    ready.wait()
    out = [(r.mask is not None and r.mode not in ("AI OFFLINE", "AI LATE"), r.latency_ms,
            r.extras.get("remote_age_frames", 0), r.extras.get("remote_age_ms", 0.0)) for r in pipeline]
    results.put((spec["index"], out, pipeline.report()))
    measured.wait()  # alive until the parent has read this process's CPU time
    engine.close()


def run_rooms(specs: list[dict], seconds: float) -> tuple[list, list, float, dict]:
    """N live rooms at once, one process each; ([per-room frames], [per-room report], wall s, {role: CPU s})."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Ray
    ready, measured, results = ctx.Barrier(len(specs) + 1), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=room, args=({**spec, "index": i}, seconds, ready, measured, results), daemon=True)
             for i, spec in enumerate(specs)]
    for p in procs:
        p.start()
    rooms = {p.pid for p in procs}
    ready.wait(timeout=300)
    cpu0, t0 = cpu_by_role(rooms), time.perf_counter()
    outs, reports = [None] * len(specs), [None] * len(specs)
    for _ in specs:
        i, out, rep = results.get(timeout=seconds + 120)
        outs[i], reports[i] = out, rep
    wall, cpu1 = time.perf_counter() - t0, cpu_by_role(rooms)
    measured.set()
    for p in procs:
        p.join(30)
    return outs, reports, wall, {role: cpu1[role] - cpu0.get(role, 0.0) for role in cpu1}


def pooled(remote: list[dict], key: str, stat: str) -> float | None:
    """The rooms' mean of one percentile of a remote timing (None for local rooms)."""
    values = [v for r in remote if (v := r.get(key, {}).get(stat)) is not None and not np.isnan(v)]
    return float(np.mean(values)) if values else None


def summarise(path: str, n: int, outs: list, reports: list, wall: float, cpu: dict, seconds: float) -> dict:
    offered = int(seconds * FPS)
    warm = int(FPS)  # the first second of each room is left out (connections, caches)
    rows = [o[warm:] for o in outs]
    fresh = [sum(1 for m, _, age, _ in r if m and age <= 2) for r in rows]
    with_mask = [[x for x in r if x[0]] for r in rows]
    lat = np.concatenate([[x[1] for x in r] for r in rows]) if any(rows) else np.array([np.nan])
    ages = np.concatenate([[x[3] for x in r] for r in with_mask]) if any(with_mask) else np.array([np.nan])
    remote = [rep.get("remote", {}) for rep in reports]
    batches: dict[str, int] = {}
    for rem in remote:
        for size, count in rem.get("server_batch_sizes", {}).items():
            batches[size] = batches.get(size, 0) + count
    counted = offered - warm
    return {
        "rooms": n, "path": path,
        "frames_out_per_room": float(np.mean([len(o) for o in outs])),
        "fresh_mask_share": float(np.mean(fresh) / counted),
        "fresh_mask_fps_total": float(sum(fresh) / (counted / FPS)),
        "latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
        "mask_age_p50_ms": float(np.percentile(ages, 50)), "mask_age_p99_ms": float(np.percentile(ages, 99)),
        "rejected": sum(r.get("rejected", 0) for r in remote), "late": sum(r.get("late", 0) for r in remote),
        "batch_sizes": dict(sorted(batches.items(), key=lambda kv: int(kv[0]))),
        "cpu_percent_of_machine": 100.0 * sum(cpu.values()) / (wall * os.cpu_count()),
        "cpu_ms_per_frame": 1000.0 * sum(cpu.values()) / max(sum(len(o) for o in outs), 1),
        "cpu_percent_by_role": {role: 100.0 * t / (wall * os.cpu_count()) for role, t in sorted(cpu.items())},
        "server_queue_ms_p50": pooled(remote, "server_queue_ms", "p50"),
        "server_receive_ms_p50": pooled(remote, "server_receive_ms", "p50"),
        "server_compute_ms_p50": pooled(remote, "server_compute_ms", "p50"),
        "round_trip_ms_p50": pooled(remote, "round_trip_ms", "p50"),
    }


def time_transport(url: str, size: tuple[int, int], requests: int) -> list[dict]:
    """One room, sequential requests: HTTP ingress per wire dtype, and a Ray DeploymentHandle."""
    from ray import serve

    from endofuse.realtime.serve import wire
    from endofuse.realtime.serve.app import APP_NAME

    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    host, port = url.removeprefix("http://").split(":")
    rows = []
    for dtype in ("uint8", "float16", "float32"):
        headers, body = wire.encode_request(x, x, dtype, 1000)
        conn, times = http.client.HTTPConnection(host, int(port)), []
        for _ in range(requests):
            t = time.perf_counter()
            conn.request("POST", wire.SEGMENT_ROUTE, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            times.append((time.perf_counter() - t) * 1000)
        rows.append({"transport": f"HTTP ingress, {dtype}", "request_bytes": len(body), "times": times})
    handle = serve.get_app_handle(APP_NAME)
    headers, body = wire.encode_request(x, x, "float16", 1000)
    times = []
    for _ in range(requests):
        t = time.perf_counter()
        handle.handle_call.remote("POST", wire.SEGMENT_ROUTE, headers, body).result()
        times.append((time.perf_counter() - t) * 1000)
    rows.append({"transport": "DeploymentHandle, float16", "request_bytes": len(body), "times": times})
    for row in rows:
        t = row.pop("times")
        row |= {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}
    return rows


def time_batches(engine_name: str, threads: int, repeats: int = 30) -> list[dict]:
    """The engine alone, as a replica opens it (dynamic batch, `threads`): ms per pair at batch 1..8.
    Batching across rooms pays only where a batch costs less per pair than single pairs."""
    from endofuse.realtime.engines import open_engine

    engine = open_engine(backend=engine_name, threads=threads, dynamic_batch=True)
    engine.warmup()
    rows = []
    for batch in (1, 2, 4, 8):
        x = np.random.default_rng(batch).random((batch, 3, *engine.input_size), dtype=np.float32)
        engine.infer(x, x)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            engine.infer(x, x)
            times.append((time.perf_counter() - t) * 1000)
        p50 = float(np.percentile(times, 50))
        rows.append({"batch": batch, "batch_ms_p50": p50, "pair_ms_p50": p50 / batch})
    for row in rows:
        row["pair_cost_vs_batch_1"] = row["pair_ms_p50"] / rows[0]["pair_ms_p50"]
    return rows


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, style in (("served", "o-"), ("local", "s--")):
        pts = [p for p in points if p["path"] == name]
        rooms = [p["rooms"] for p in pts]
        left.plot(rooms, [p["fresh_mask_fps_total"] for p in pts], style, label=name)
        right.plot(rooms, [100 * p["fresh_mask_share"] for p in pts], style, label=name)
    rooms = sorted({p["rooms"] for p in points})
    left.plot(rooms, [FPS * r for r in rooms], ":", color="grey", label="offered")
    left.set(xlabel="rooms", ylabel="frames/s with a mask <= 2 frames old", xticks=rooms)
    right.set(xlabel="rooms", ylabel="% of frames with a fresh mask", xticks=rooms, ylim=(0, 105))
    left.legend(), right.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rooms", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seconds", type=float, default=10.0, help="per point and path (default 10)")
    parser.add_argument("--engine", default="auto", help="engine of the server and of the local rooms")
    parser.add_argument("--threads", type=int, default=1, help="inference threads per local room (default 1)")
    parser.add_argument("--server-threads", type=int, default=None,
                        help="inference threads of the server's replica (default: endofuse serve's, its "
                             "reserved CPUs)")
    parser.add_argument("--request-every", default="auto", choices=("auto", "1", "2"),
                        help="which frames served rooms send (default auto, the room's default)")
    parser.add_argument("--compare-every-frame", type=int, nargs="*", default=[4, 8],
                        help="rerun these served points with --request-every 1 (default 4 8; none: skip)")
    parser.add_argument("--compare-rooms", type=int, nargs="*", default=[1, 4],
                        help="rerun these served points with the other ingress (default 1 4; none: skip)")
    parser.add_argument("--replicas", type=int, default=os.cpu_count(),
                        help="server replicas, one engine thread each (default: one per CPU)")
    parser.add_argument("--room-nice", type=int, default=0,
                        help="niceness of the room processes, local and served alike (default 0)")
    parser.add_argument("--ingress", default="haproxy", choices=("haproxy", "proxy"),
                        help="the server's HTTP ingress (default haproxy, endofuse serve's)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--deadline-ms", type=float, default=100.0)
    parser.add_argument("--in-flight", type=int, default=1, choices=(1, 2),
                        help="requests on the wire per room (default 1, the room's default)")
    parser.add_argument("--wire-dtype", default="uint8", choices=("uint8", "float16", "float32"),
                        help="what served rooms send (default uint8, the room's default)")
    parser.add_argument("--paths", nargs="+", default=["served", "local"], choices=("served", "local"),
                        help="run only these (a partial run prints its points and writes no JSON or plot)")
    parser.add_argument("--transport-requests", type=int, default=100)
    parser.add_argument("--plot", type=Path, default=Path(__file__).parents[1] / "docs" / "images" / "rooms.png")
    add_json_argument(parser)
    args = parser.parse_args(argv)

    from endofuse.realtime.serve.service import EngineOptions, local_ray_environment

    ray_environment = local_ray_environment(args.ingress)  # as endofuse serve does, before Ray is imported
    import ray

    from endofuse.realtime.commands.bench import load_ring
    from endofuse.realtime.serve import app
    from endofuse.realtime.serve.client import RoomClient

    _, _, described = load_ring("synthetic", 1)
    server_threads = args.server_threads or 1  # a replica's default: its one reserved CPU
    batching = time_batches(args.engine, server_threads)  # before Ray starts: the engine alone
    config = app.ServeConfig(engine=EngineOptions(engine=args.engine, threads=args.server_threads),
                             replicas=args.replicas,
                             max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms)
    served = {"path": "served", "deadline_ms": args.deadline_ms, "wire_dtype": args.wire_dtype,
              "in_flight": args.in_flight, "nice": args.room_nice, "request_every": args.request_every}
    local = {"path": "local", "engine": args.engine, "threads": args.threads, "nice": args.room_nice}
    points, transport = [], []

    def measure(plan: list[tuple[int, dict, str]], label: str) -> None:
        """Start a local Ray and the server (its ingress set in the environment), time the transport, then
        run the points of `plan`: (rooms, spec, the point's path name)."""
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="warning")
        try:
            url = app.start(config, port=PORT)
            size = tuple(RoomClient(url).health()["input_size"])
            transport.extend(row | {"transport": f"{row['transport']} ({label})"}
                             for row in time_transport(url, size, args.transport_requests))
            for n, spec, name in plan:
                spec = spec | ({"url": url} if spec["path"] == "served" else {})
                point = summarise(spec["path"], n, *run_rooms([spec] * n, args.seconds), args.seconds)
                point["path"] = name
                points.append(point)
                print(points[-1], flush=True)
        finally:
            app.stop()
            ray.shutdown()

    every_frame = "served, every frame"
    plan = [(n, spec, spec["path"]) for n in args.rooms for spec in (served, local) if spec["path"] in args.paths]
    if served["request_every"] != "1" and "served" in args.paths:  # the pacing's effect, same run
        plan += [(n, served | {"request_every": "1"}, every_frame) for n in args.compare_every_frame]
    measure(plan, args.ingress)
    other = "proxy" if args.ingress == "haproxy" else "haproxy"
    if args.compare_rooms and "served" in args.paths:  # the other ingress, same run, for its ratio
        ray_environment = {"main": ray_environment, other: local_ray_environment(other)}
        measure([(n, served, f"served, {other}") for n in args.compare_rooms], other)
    if set(args.paths) != {"served", "local"}:  # a partial run (profiling): printed, nothing written
        return 0
    plot(points, args.plot)

    rows = [[p["rooms"], p["path"], p["frames_out_per_room"], 100 * p["fresh_mask_share"], p["fresh_mask_fps_total"],
             p["latency_p50_ms"], p["latency_p99_ms"], p["mask_age_p50_ms"], p["mask_age_p99_ms"], p["rejected"],
             p["late"], " ".join(f"{k}:{v}" for k, v in p["batch_sizes"].items()) or "-",
             p["cpu_percent_of_machine"]] for p in points]
    by = {(p["rooms"], p["path"]): p for p in points}
    ratios = [[n, by[(n, "served")]["fresh_mask_fps_total"] / max(by[(n, "local")]["fresh_mask_fps_total"], 1e-9)]
              for n in args.rooms]
    other_points = [p for p in points if p["path"] == f"served, {other}"]
    ingress_rows = [[p["rooms"], by[(p["rooms"], "served")]["cpu_ms_per_frame"], p["cpu_ms_per_frame"],
                     p["cpu_ms_per_frame"] / by[(p["rooms"], "served")]["cpu_ms_per_frame"],
                     by[(p["rooms"], "served")]["round_trip_ms_p50"], p["round_trip_ms_p50"],
                     100 * by[(p["rooms"], "served")]["fresh_mask_share"], 100 * p["fresh_mask_share"]]
                    for p in other_points if (p["rooms"], "served") in by]
    every_rows = [[p["rooms"], 100 * by[(p["rooms"], "served")]["fresh_mask_share"], 100 * p["fresh_mask_share"],
                   by[(p["rooms"], "served")]["cpu_percent_of_machine"], p["cpu_percent_of_machine"],
                   by[(p["rooms"], "served")]["round_trip_ms_p50"], p["round_trip_ms_p50"],
                   by[(p["rooms"], "served")]["mask_age_p50_ms"], p["mask_age_p50_ms"]]
                  for p in points if p["path"] == every_frame and (p["rooms"], "served") in by]
    tables = [
        table(f"N rooms at {FPS:g} fps: one server vs N local pipelines ({args.seconds:g} s per point)",
              ["rooms", "path", "frames out/room", "fresh mask %", "fresh masks/s (all rooms)", "latency p50 ms",
               "latency p99 ms", "mask age p50 ms", "mask age p99 ms", "rejected", "late", "batch sizes",
               "CPU % of machine"], rows,
              note="fresh mask: drawn with a mask at most 2 frames old, of the frames the cameras gave (after a "
                   "1-s warm-up). Latency: capture to overlay on the room (a served room never waits for its "
                   "mask; the mask's age is the server's part). Batch sizes: batch size:count as the rooms saw "
                   f"them. served: the {args.ingress} ingress with {args.replicas} replica(s), rooms sending "
                   f"--request-every {args.request_every}; 'served, every frame': the same with every frame sent; "
                   f"'served, {other}': the same behind the other ingress."),
        table("Served against local: fresh masks/s of all rooms (ratio in one run)", ["rooms", "served / local"],
              ratios),
        *([table(f"The ingress: {args.ingress} (served) against {other} in the same run",
                 ["rooms", f"CPU ms/frame, {args.ingress}", f"CPU ms/frame, {other}",
                  "ratio", f"round trip p50 ms, {args.ingress}",
                  f"round trip p50 ms, {other}", f"fresh mask %, {args.ingress}",
                  f"fresh mask %, {other}"], ingress_rows,
                 note="Each ingress on a freshly started local Ray, the same rooms and server settings.")]
          if ingress_rows else []),
        *([table(f"Which frames rooms send: --request-every {args.request_every} (served) against every frame, "
                 "same run", ["rooms", "fresh mask %, paced", "fresh mask %, every frame", "CPU %, paced",
                              "CPU %, every frame", "round trip p50 ms, paced", "round trip p50 ms, every frame",
                              "mask age p50 ms, paced", "mask age p50 ms, every frame"], every_rows,
                 note="auto: a room sends every other frame while the server's own time (least round trip less "
                      "its queue wait of the last 30 answers) is under 0.8 of a frame or its queue wait (median "
                      "of the last 30) over a quarter of one (realtime/serve/pacing.py)."
                 )] if every_rows else []),
        table("Where the CPU goes (% of the machine's CPUs, by process) and the served path's timings",
              ["rooms", "path", "rooms %", "ingress %", "replica %", "rest of Ray %", "CPU ms per frame",
               "round trip p50 ms", "server queue p50 ms", "of which body read p50 ms", "compute p50 ms"],
              [[p["rooms"], p["path"], roles.get("rooms", 0.0),
                roles.get("ray HTTP proxy", 0.0) + roles.get("HAProxy ingress", 0.0),
                roles.get("replica (engine)", 0.0),
                sum(v for k, v in roles.items()
                    if k not in ("rooms", "ray HTTP proxy", "HAProxy ingress", "replica (engine)")),
                p["cpu_ms_per_frame"], p["round_trip_ms_p50"], p["server_queue_ms_p50"], p["server_receive_ms_p50"],
                p["server_compute_ms_p50"]] for p in points for roles in [p["cpu_percent_by_role"]]],
              note="CPU from /proc, every process of the run: the room processes, the ingress (HAProxy or Ray's "
                   "HTTP proxy), the replica and the rest of Ray (controller, raylet, GCS; idle during local "
                   "points). CPU ms per frame: all of it over the frames the rooms put out. Server timings: "
                   "the rooms' median of the "
                   "per-request headers (queue: arrival at the replica to its batch's start; compute: the "
                   "engine call of the whole batch)."),
        table(f"Batching on this machine: the server's engine alone, {server_threads} thread(s), WLI+NBI pairs",
              ["batch", "ms per batch p50", "ms per pair p50", "per-pair cost vs batch 1"],
              [[b["batch"], b["batch_ms_p50"], b["pair_ms_p50"], b["pair_cost_vs_batch_1"]] for b in batching],
              note="What batching across rooms can win back for the network hop: the engine's cost per pair at "
                   "each batch size, timed before Ray starts, with nothing else running."),
        table(f"Transport: one room, {args.transport_requests} sequential requests, WLI+NBI pair",
              ["transport", "request bytes", "p50 ms", "p99 ms"],
              [[t["transport"], t["request_bytes"], t["p50_ms"], t["p99_ms"]] for t in transport],
              note="HTTP ingress is what rooms use (any machine, no Ray on the room side); a DeploymentHandle "
                   "works only for callers inside the Ray cluster. gRPC ingress was not measured."),
    ]
    report(record("rooms", "Rooms on one server: the scale curve", tables,
                  details={"points": points, "transport": transport, "batching": batching, "source": described,
                           "ingress": args.ingress, "replicas": args.replicas, "ray_environment": ray_environment,
                           "engine": args.engine, "threads": args.threads, "server_threads": args.server_threads,
                           "in_flight": args.in_flight, "wire_dtype": args.wire_dtype,
                           "request_every": args.request_every,
                           "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms,
                           "deadline_ms": args.deadline_ms}), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
