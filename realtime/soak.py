"""Soak test: run the pipeline for many frames and check resident memory stays flat.

    python -m endofuse.realtime.soak --frames 10000 --engine onnxruntime --json soak.json

The pipeline runs as fast as possible (lossless) on a ring of synthetic pairs;
resident memory (VmRSS) is sampled every `--every` frames. The baseline is
the sample after `--settle` frames (allocators, ONNX Runtime arenas and
OpenCV buffers have reached their working size by then); the run passes when
every later sample stays within `--tolerance` (default 5 %) of it. Exit code
0 = flat, 1 = grew.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from endofuse.realtime.tracing import now


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
    from endofuse.realtime.bench_command import load_ring
    from endofuse.realtime.pipeline import Pipeline, PipelineConfig
    from endofuse.realtime.sinks import CallbackSink
    from endofuse.realtime.sources import MemorySource

    wli, nbi, _ = load_ring("synthetic", ring)
    samples: list[tuple[int, int]] = []
    count = [0]

    def sample(result) -> None:
        count[0] += 1
        if count[0] % every == 0:
            samples.append((count[0], resident_bytes()))

    pipeline = Pipeline(MemorySource(wli, "soak WLI", loops=None), MemorySource(nbi, "soak NBI", loops=None),
                        engine, PipelineConfig(frames=frames), [CallbackSink(sample)])
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
    parser = argparse.ArgumentParser(prog="python -m endofuse.realtime.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled demo weights")
    parser.add_argument("--engine", default="onnxruntime")
    parser.add_argument("--every", type=int, default=100, help="sample memory every N frames")
    parser.add_argument("--settle", type=int, default=500, help="frames before the baseline sample")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.run_command import quiet_opencv

    quiet_opencv()
    engine = open_engine(args.checkpoint, backend=args.engine)
    engine.warmup()
    result = soak(engine, args.frames, args.every, args.settle, args.tolerance)
    result.update(model=engine.model_label, engine=engine.name)
    memory = result["memory"]
    print(f"soak: {result['frames']} frames in {result['seconds']:.0f} s ({result['fps']:.1f} fps); RSS "
          f"{memory['baseline_mb']:.1f} MB after {args.settle} frames, peak {memory['peak_mb']:.1f} MB, final "
          f"{memory['final_mb']:.1f} MB: growth {100 * memory['growth']:.2f} % "
          f"({'flat' if memory['flat'] else 'GREW'}, tolerance {100 * args.tolerance:.0f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if memory["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
