"""`EndofuseRecorderOp`: FrameResults -> video file / image folder + report.json (the `endofuse run` keys)."""
from __future__ import annotations

import collections
import math
from pathlib import Path

from endofuse.realtime.holoscan._runtime import import_holoscan

import_holoscan()

from endofuse.realtime.holoscan.device import host_result  # noqa: E402
from endofuse.realtime.holoscan.operators import PLACEMENT, EndofuseOperator  # noqa: E402
from endofuse.realtime.input.frame_times import timing_report  # noqa: E402
from endofuse.realtime.output.sinks import ImageFolderSink, VideoFileSink  # noqa: E402
from endofuse.realtime.pairing.sync import MISSING, PAIRED, STALE  # noqa: E402
from endofuse.realtime.segment import engine_label  # noqa: E402
from endofuse.realtime.tracing import LatencyStats, now, percentiles  # noqa: E402


class EndofuseRecorderOp(EndofuseOperator):
    """Input `result` (a `FrameResult`) -> `out` video, `frames_dir` PNGs, `report` JSON (written at stop).

    The report has the keys of `endofuse run`'s report. Pass the graph's
    `sync_op` / `inference_op` / source ops for the sync counters, the engine's
    name and the source names; `extra_report` (a callable returning a dict) adds
    keys such as Holoscan's data-flow-tracking latency.
    """

    def __init__(self, fragment, *args, out: str | None = None, frames_dir: str | None = None,
                 report: str | None = None, fps: float = 30.0, warmup_frames: int = 10, sync_op=None,
                 inference_op=None, wli_op=None, nbi_op=None, overlay_op=None, endoscope_op=None, live: bool = False,
                 sinks=(), **kwargs) -> None:
        self.sinks = list(sinks)
        if out:
            self.sinks.append(VideoFileSink(out, fps))
        if frames_dir:
            self.sinks.append(ImageFolderSink(frames_dir))
        self.report_path = Path(report) if report else None
        self.stats = LatencyStats(warmup_frames)
        self.sync_op, self.inference_op, self.wli_op, self.nbi_op = sync_op, inference_op, wli_op, nbi_op
        # the overlay op's output stage (temporal metrics, overlay age) and the endoscope op (one endoscope stream)
        self.overlay_op, self.endoscope_op = overlay_op, endoscope_op
        self.mode_counts: collections.Counter = collections.Counter()
        self.live = live
        self.frames = 0
        self.counts = {PAIRED: 0, STALE: 0, MISSING: 0}
        self.class_counts: collections.Counter = collections.Counter()
        self.skews_ms: list[float] = []
        self.resolution_changes = 0
        self._last_size = None
        self.interrupted = False
        self.extra_report = None
        self._closed = False
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec) -> None:
        spec.input("result")

    def _compute(self, op_input, op_output) -> None:
        self._record(op_input.receive("result"))

    def _record(self, result) -> None:
        placement = result.extras.pop(PLACEMENT, None)
        host = host_result(result)  # frames kept on the GPU: one copy here, for the files and the frame code
        ready = now()
        if placement is not None and self.overlay_op is not None:
            # the overlay's age; with frame codes, read back from the pixels written out (glass-to-glass)
            self.overlay_op.mask_stage.record_output(placement[0], placement[1], host.overlay, ready)
        for sink in self.sinks:
            sink.write(host)
        self.mode_counts[result.mode] += 1
        self.stats.record(result.latency_ms, result.timings_ms, ready)
        self.frames += 1
        self.counts[result.status] = self.counts.get(result.status, 0) + 1
        if result.skew_ms is not None:
            self.skews_ms.append(result.skew_ms)
        if "class" in result.extras:
            self.class_counts[result.extras["class"]] += 1
        size = result.frame.shape[:2]
        if self._last_size is not None and size != self._last_size:
            self.resolution_changes += 1
        self._last_size = size

    def stop(self) -> None:
        try:
            self.close()
        except Exception as exc:  # noqa: BLE001 - Holoscan would only log it: run_app raises it instead
            self._fail(exc)

    def close(self) -> None:
        """Finalise the video and write the report (idempotent; also called by the app on Ctrl-C).

        Every sink is closed; the first failure (a video that could not be written) is raised after.
        """
        if self._closed:
            return
        self._closed = True
        errors = getattr(self.fragment, "errors", None)
        failure = None
        for sink in self.sinks:
            if errors and hasattr(sink, "mark_partial"):
                sink.mark_partial(str(errors[0]))  # keep what was written, under a name saying so
            try:
                sink.close()
            except Exception as exc:  # noqa: BLE001 - close every sink, raise the first failure
                failure = failure or exc
        if self.report_path is not None:
            from endofuse.realtime.commands.run import write_report

            write_report(self.report(), self.report_path)
        if failure is not None:
            raise failure

    def report(self) -> dict:
        summary = self.stats.summary()
        engine = getattr(self.inference_op, "engine", None)
        sync = self.sync_op.sync.summary() if self.sync_op is not None else None
        skews = [abs(s) for s in self.skews_ms]
        # as natively: frames a camera-like source skipped or a port replaced before they were used
        pairing_op = self.sync_op if self.sync_op is not None else self.endoscope_op
        dropped = {"wli_capture": getattr(self.wli_op, "dropped", 0) + getattr(pairing_op, "wli_dropped", 0),
                   "results": 0}
        nbi_dropped = getattr(self.nbi_op, "dropped", 0) + getattr(self.sync_op, "nbi_dropped", 0)
        warnings = [w for op in (self.wli_op, self.nbi_op) if op is not None for w in op.warnings]
        report = {
            "model": getattr(engine, "model_label", ""),
            "engine": engine_label(engine) if engine is not None else "",
            "input_size": list(getattr(engine, "input_size", ())),
            "engine_threads": getattr(engine, "threads", None),  # a CPU engine's inference threads
            "wli": getattr(getattr(self.wli_op, "source", None), "name", "WLI port"),
            "nbi": None if self.nbi_op is None else self.nbi_op.source.name,
            "live": self.live,
            "timing": timing_report(getattr(self.wli_op, "source", None),
                                    None if self.nbi_op is None else self.nbi_op.source,
                                    one_stream=self.endoscope_op is not None),
            "frames": self.frames,
            "paired": self.counts[PAIRED],
            "stale_pairs": self.counts[STALE],
            "nbi_missing": self.counts[MISSING],
            "dropped": sum(dropped.values()),
            "dropped_by_port": dropped,
            "nbi_dropped": nbi_dropped,
            "fps": summary["fps"],
            "latency_ms": summary["latency_ms"],
            "stages_ms": summary["stages_ms"],
            "warmup_frames": min(self.stats.warmup, self.stats.seen),
            "counted_frames": self.stats.counted,
            "skew_abs_ms": percentiles(skews),
            "skew_mean_ms": (sum(self.skews_ms) / len(self.skews_ms)) if self.skews_ms else math.nan,
            "sync": {k: (sync[k] if sync else 0)
                     for k in ("nbi_duplicates", "nbi_out_of_order", "nbi_too_late", "wli_rejected")},
            "resolution_changes": self.resolution_changes,
            "camera_reconnects": sum(getattr(getattr(op, "source", None), "reconnects", 0)
                                     for op in (self.wli_op, self.nbi_op) if op is not None),
            "warnings": warnings,
            "runtime": "holoscan",
        }
        if self.overlay_op is not None:
            report.update(self.overlay_op.mask_stage.summary())  # "temporal" and "overlay", as natively
        if self.endoscope_op is not None:  # the native keys of one endoscope stream
            report["modes"] = dict(self.mode_counts)
            report["fused_memory"] = self.counts.get("memory", 0)
            report["endoscope"] = self.endoscope_op.stage.summary()
        classifier = getattr(self.inference_op, "classifier", None)
        if classifier is not None:  # the native report's section
            report["classifier"] = {"model": classifier.label, "classes": list(classifier.classes),
                                    "class_counts": {c: self.class_counts[c] for c in classifier.classes}}
        if hasattr(engine, "remote_summary"):  # served by `endofuse serve`: the native report's section
            report["remote"] = engine.remote_summary()
        if self.stats.counted == 0:  # the native wording
            report["statistics_note"] = (f"no statistics: {self.frames} frame(s), all within the "
                                         f"{self.stats.warmup}-frame warm-up (use more --frames or less --warmup)")
        if self.extra_report is not None:
            report.update(self.extra_report())
        if self.interrupted:
            report["interrupted"] = True
        return report
