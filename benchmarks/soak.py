"""Soak: run the pipeline for many frames and check resident memory stays flat.

    python benchmarks/soak.py --frames 10000 --engine onnxruntime --json benchmarks/results/soak.json

The pipeline runs as fast as possible (lossless) on a ring of synthetic pairs;
resident memory (VmRSS) is sampled every `--every` frames. The baseline is
the sample after `--settle` frames (allocators, ONNX Runtime arenas and
OpenCV buffers have reached their working size by then); the run passes when
every later sample stays within `--tolerance` (default 5 %) of it. Exit code
0 = flat, 1 = grew.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from endofuse.realtime.engines import BACKENDS
from endofuse.realtime.tracing import now

from _common import add_json_argument, record, report, table


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc; ru_maxrss elsewhere, a peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_verdict(samples: list[tuple[int, int]], settle: int, tolerance: float) -> dict:
    """Growth of RSS samples [(frame, bytes)] after the first sample at or past `settle` frames."""
    after = [(frame, rss) for frame, rss in samples if frame >= settle]
    if len(after) < 2:
        raise ValueError(f"need at least two memory samples after frame {settle}, got {len(after)}")
    baseline = after[0][1]
    peak = max(rss for _, rss in after)
    final = after[-1][1]
    growth = (peak - baseline) / baseline
    return {
        "baseline_mb": baseline / 2**20,
        "peak_mb": peak / 2**20,
        "final_mb": final / 2**20,
        "growth": growth,
        "tolerance": tolerance,
        "flat": growth <= tolerance,
    }


def soak(engine, frames: int, every: int = 100, settle: int = 500, tolerance: float = 0.05,
         ring: int = 30) -> dict:
    """Run `frames` pairs through the pipeline, sampling RSS; returns the pipeline report plus the verdict."""
    from endofuse.realtime.commands.bench import load_ring
    from endofuse.realtime.input.sources import MemorySource
    from endofuse.realtime.output.sinks import CallbackSink
    from endofuse.realtime.pipeline import build_pipeline

    wli, nbi, _ = load_ring("synthetic", ring)
    samples: list[tuple[int, int]] = []
    count = [0]

    def sample(result) -> None:
        count[0] += 1
        if count[0] % every == 0:
            samples.append((count[0], resident_bytes()))

    pipeline = build_pipeline(MemorySource(wli, "soak WLI", loops=None), MemorySource(nbi, "soak NBI", loops=None),
                              engine, frames=frames, sinks=[CallbackSink(sample)])
    started = now()
    report = pipeline.run()
    return {
        "frames": report["frames"],
        "seconds": now() - started,
        "fps": report["fps"],
        "latency_ms": report["latency_ms"],
        "memory": memory_verdict(samples, settle, tolerance),
        "rss_samples_mb": [(frame, round(rss / 2**20, 2)) for frame, rss in samples],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled demo weights")
    parser.add_argument("--engine", default="onnxruntime", choices=BACKENDS)
    parser.add_argument("--every", type=int, default=100, help="sample memory every N frames")
    parser.add_argument("--settle", type=int, default=500, help="frames before the baseline sample")
    parser.add_argument("--tolerance", type=float, default=0.05)
    add_json_argument(parser)
    args = parser.parse_args(argv)
    from endofuse.realtime.commands.run import quiet_opencv
    from endofuse.realtime.engines import open_engine

    quiet_opencv()
    engine = open_engine(args.checkpoint, backend=args.engine)
    engine.warmup()
    result = soak(engine, args.frames, args.every, args.settle, args.tolerance)
    result.update(model=engine.model_label, engine=engine.name)
    memory = result["memory"]
    columns = ["engine", "frames", "seconds", "pairs/s", "p50 ms", "p99 ms", f"RSS MB after {args.settle} frames",
               "peak RSS MB", "final RSS MB", "growth %", "flat"]
    row = [engine.name, result["frames"], result["seconds"], result["fps"], result["latency_ms"]["p50"],
           result["latency_ms"]["p99"], memory["baseline_mb"], memory["peak_mb"], memory["final_mb"],
           100 * memory["growth"], memory["flat"]]
    tab = table(f"{result['model']}, lossless, as fast as possible, RSS sampled every {args.every} frames",
                columns, [row], f"flat = growth within {100 * args.tolerance:g} % of the baseline sample")
    report(record("soak", "Soak: resident memory over a long run", [tab], argv, details=result), args.json)
    return 0 if memory["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
