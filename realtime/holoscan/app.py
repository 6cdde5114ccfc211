"""The endofuse Holoscan app: `endofuse run --runtime holoscan` and, HoloHub style,

    python -m endofuse.realtime.holoscan.app --config app.yaml

The YAML has one section per operator, named as the operator is in the graph
(`wli_source`, `nbi_source`, `sync`, `inference`, `overlay`, `recorder`; `endoscope` in
place of `nbi_source` and `sync` for one endoscope stream), plus
`scheduler` ({kind: greedy | event | multi_thread, workers: N}) and
`tracking` ({enabled: true}). See realtime/holoscan/app.yaml.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import inspect
import signal
import sys
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.realtime.holoscan._runtime import import_holoscan, quiet_holoscan_logs

import_holoscan()

from holoscan.core import Application, DataFlowMetric  # noqa: E402
from holoscan.schedulers import EventBasedScheduler, GreedyScheduler, MultiThreadScheduler  # noqa: E402

from endofuse.realtime.holoscan.endoscope import EndofuseEndoscopeOp  # noqa: E402
from endofuse.realtime.holoscan.operators import (  # noqa: E402
    EndofuseInferenceOp,
    EndofuseOverlayOp,
    EndofuseSourceOp,
    EndofuseSyncOp,
)
from endofuse.realtime.holoscan.recorder import EndofuseRecorderOp  # noqa: E402
from endofuse.realtime.input.source_specs import open_endoscope_source  # noqa: E402
from endofuse.realtime.input.sources import Source  # noqa: E402

SCHEDULERS = ("greedy", "event", "multi_thread")
SECTIONS = ("wli_source", "nbi_source", "sync", "endoscope", "inference", "overlay", "recorder", "scheduler",
            "tracking")


def _keywords(cls, *internal: str) -> set[str]:
    """The keyword arguments a config section may set for operator `cls` (graph wiring left out)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind is p.KEYWORD_ONLY} - set(internal)


SECTION_KEYS = {
    "wli_source": _keywords(EndofuseSourceOp, "role", "gate", "stop_with", "epoch_from"),
    "nbi_source": _keywords(EndofuseSourceOp, "role", "gate", "stop_with", "epoch_from"),
    "sync": _keywords(EndofuseSyncOp),
    "endoscope": _keywords(EndofuseEndoscopeOp, "input_size", "device"),
    "inference": _keywords(EndofuseInferenceOp),
    "overlay": _keywords(EndofuseOverlayOp, "backpressure", "fps", "frame_code"),
    "recorder": _keywords(EndofuseRecorderOp, "sync_op", "inference_op", "wli_op", "nbi_op", "overlay_op",
                          "endoscope_op", "sinks", "live"),
    "scheduler": {"kind", "workers"},
    "tracking": {"enabled"},
}


class EndofuseApp(Application):
    """Two endofuse sources -> sync -> inference -> overlay -> recorder, configured by `sections`.

    `sections` maps the YAML section names to keyword arguments; sources may be
    given as `Source` objects (`source:` key) or spec strings. A missing
    `nbi_source` (or `source: null`) runs WLI-only. An `endoscope` section makes
    `wli_source` one endoscope stream (WLI and NBI switched by hand): wli_source
    -> endoscope -> inference -> overlay -> recorder, with no NBI source.
    """

    def __init__(self, sections: dict, engine=None, sinks=(), **kwargs) -> None:
        super().__init__(**kwargs)  # first: Application.__del__ expects its own attributes even after an error
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise EndofuseError(f"unknown config section(s) {', '.join(sorted(unknown))}; "
                                f"expected {', '.join(SECTIONS)}")
        self.sections, self._engine, self._sinks = {k: dict(v or {}) for k, v in sections.items()}, engine, sinks
        for section, keys in self.sections.items():
            unknown = set(keys) - SECTION_KEYS[section]
            if unknown:  # Holoscan would take a misspelt keyword as an operator Arg and ignore it
                raise EndofuseError(f"config section '{section}': unknown key(s) {', '.join(sorted(unknown))}; "
                                    f"expected {', '.join(sorted(SECTION_KEYS[section]))}")
        self.tracker = None
        self.stop_requested = False  # request_stop() may come before run() has composed the graph
        self.errors: list[Exception] = []  # user errors raised inside operators (see EndofuseOperator)

    def compose(self) -> None:
        s = self.sections
        wli_cfg, nbi_cfg = dict(s.get("wli_source", {})), dict(s.get("nbi_source", {}))
        endoscope = "endoscope" in s
        if endoscope and nbi_cfg.get("source") is not None:
            raise EndofuseError("config: an 'endoscope' section takes one stream (wli_source), which carries both "
                                "modes; remove nbi_source")
        live = bool(wli_cfg.get("live", False))
        fps = float(wli_cfg.get("fps", 30.0))
        if endoscope and wli_cfg.get("source") is not None and not isinstance(wli_cfg["source"], Source):
            # as `run --endoscope SRC`: `synthetic` is a synthetic processor output, not a WLI scene
            wli_cfg["source"] = open_endoscope_source(str(wli_cfg["source"]), fps, wli_cfg.get("frames"))
        self.wli_op = EndofuseSourceOp(self, role="wli", name="wli_source", **wli_cfg)
        live = live or self.wli_op.live
        self.nbi_op = None
        if nbi_cfg.get("source") is not None:
            nbi_cfg.setdefault("fps", fps)
            nbi_cfg["live"] = live or bool(nbi_cfg.get("live", False))
            self.nbi_op = EndofuseSourceOp(self, role="nbi", name="nbi_source", stop_with=self.wli_op, **nbi_cfg)
            self.wli_op.epoch_from = self.nbi_op
        infer_cfg = dict(s.get("inference", {}))
        if self._engine is not None:
            infer_cfg["engine"] = self._engine
        self.inference_op = EndofuseInferenceOp(self, name="inference", **infer_cfg)
        self.sync_op = self.endoscope_op = None
        if endoscope:  # the crops' model inputs are made at the engine's size, on its device
            engine = self.inference_op.engine
            self.endoscope_op = EndofuseEndoscopeOp(self, name="endoscope", input_size=tuple(engine.input_size),
                                                    device=getattr(engine, "device", None), **s["endoscope"])
            pairing_op = self.endoscope_op
        else:
            sync_cfg = dict(s.get("sync", {}))
            sync_cfg.setdefault("wli_fps", self.wli_op.source.fps)
            self.sync_op = pairing_op = EndofuseSyncOp(self, name="sync", **sync_cfg)
            if self.nbi_op is not None and not live:
                self._gate_lossless(self.wli_op, self.nbi_op, self.sync_op)
        overlay_cfg = {"fps": self.wli_op.source.fps, "frame_code": self.wli_op.source.stamp_code,
                       **s.get("overlay", {})}
        self.overlay_op = EndofuseOverlayOp(self, name="overlay", backpressure=("result",), **overlay_cfg)
        # live timing draws on the newest captured frame; time_s is on the WLI source's timeline
        newest = self.endoscope_op or self.wli_op
        self.overlay_op.newest = lambda: newest.latest
        self.overlay_op.origin = lambda: self.wli_op.epoch
        rec_cfg = dict(s.get("recorder", {}))
        rec_cfg.setdefault("fps", self.wli_op.source.fps)
        self.recorder_op = EndofuseRecorderOp(self, name="recorder", sync_op=self.sync_op,
                                              inference_op=self.inference_op, wli_op=self.wli_op,
                                              nbi_op=self.nbi_op, overlay_op=self.overlay_op,
                                              endoscope_op=self.endoscope_op, live=live, sinks=self._sinks,
                                              **rec_cfg)
        self.recorder_op.extra_report = self.holoscan_report
        if endoscope:
            self.add_flow(self.wli_op, self.endoscope_op, {("frame", "frame")})
        else:
            self.add_flow(self.wli_op, self.sync_op, {("frame", "wli")})
        if self.nbi_op is not None:
            self.add_flow(self.nbi_op, self.sync_op, {("frame", "nbi")})
        self.add_flow(pairing_op, self.inference_op, {("pair", "pair")})
        self.add_flow(self.inference_op, self.overlay_op, {("segmented", "segmented")})
        self.add_flow(self.overlay_op, self.recorder_op, {("result", "result")})
        if self.stop_requested:
            self._stop_sources()

    @staticmethod
    def _gate_lossless(wli: EndofuseSourceOp, nbi: EndofuseSourceOp, sync: EndofuseSyncOp) -> None:
        """Recordings run lossless and pair as natively, at any two frame rates and on any scheduler.

        Each source reads its next frame and holds it until its gate opens; the gates
        compare the frames' own times, so no frame period is assumed:

        * a WLI frame at time t leaves once NBI has sent a frame at or after t (or
          ended) and the sync op has taken every NBI frame sent. Checking the sync
          op, not only the NBI source, matters on a multi-threaded scheduler, where
          the WLI frame could otherwise reach the sync op first;
        * an NBI frame leaves while the previous one sent is before the held WLI
          frame's time (or WLI has ended), so NBI runs at most one frame past WLI.

        Whenever WLI waits at t, NBI has sent nothing at or after t, so NBI's gate is
        open: the two never wait on each other.
        """

        def wli_gate(t: float) -> bool:
            sent = nbi.last_sync_time  # read before `emitted`: the NBI op writes them in the other order
            reached = nbi.finished or (sent is not None and sent >= t)
            return reached and sync.nbi_seen >= nbi.emitted

        def nbi_gate(t: float) -> bool:
            held = wli.pending
            if wli.finished:
                return True
            if held is None:
                return False  # WLI has not read its next frame yet: it will, on its next tick
            sent = nbi.last_sync_time
            return sent is None or sent < held.sync_time

        wli.gate, nbi.gate = wli_gate, nbi_gate

    def request_stop(self) -> None:
        """Stop between two frames (thread-safe, idempotent): the sources end and the graph drains and stops.

        Stopping the sources, not the graph, lets the recorder finalise the frames
        already in flight, so the video holds exactly the frames the report counts.
        """
        self.stop_requested = True  # before looking for the ops: compose() makes them, then reads this
        self._stop_sources()

    def _stop_sources(self) -> None:
        recorder = getattr(self, "recorder_op", None)
        if recorder is not None:
            recorder.interrupted = True
        for op in (getattr(self, "wli_op", None), getattr(self, "nbi_op", None)):
            if op is not None:
                op.source.stop()  # a read (or a camera's reconnect wait) then returns no frame: the op ends

    def holoscan_report(self) -> dict:
        """The Holoscan part of the report: scheduler and data-flow-tracking latency per path."""
        paths = {}
        if self.tracker is not None:
            for path in self.tracker.get_path_strings():
                paths[path] = {
                    "avg_ms": self.tracker.get_metric(path, DataFlowMetric.AVG_E2E_LATENCY),
                    "min_ms": self.tracker.get_metric(path, DataFlowMetric.MIN_E2E_LATENCY),
                    "max_ms": self.tracker.get_metric(path, DataFlowMetric.MAX_E2E_LATENCY),
                    "messages": int(self.tracker.get_metric(path, DataFlowMetric.NUM_DST_MESSAGES)),
                }
        cfg = self.sections.get("scheduler", {})
        overlay = self.overlay_op
        return {"holoscan": {
            "scheduler": cfg.get("kind", "greedy"), "workers": int(cfg.get("workers", 1)),
            "flow_tracking_ms": paths,
            # what decides between the schedulers: how many threads ran the operators of one frame's path
            # (source, sync, inference, overlay) and how often a frame moved from one thread to another
            "threads_used": len(overlay.threads),
            "handoffs_per_frame": overlay.handoffs / overlay.frames if overlay.frames else 0.0,
            "nbi_dropped_by_stage": {"nbi_source": getattr(self.nbi_op, "dropped", 0),
                                     "sync_port": getattr(self.sync_op, "nbi_dropped", 0)},
        }}


def make_scheduler(app: Application, kind: str = "greedy", workers: int = 1):
    if kind == "greedy":
        return GreedyScheduler(app, name="greedy")
    if kind == "event":
        return EventBasedScheduler(app, worker_thread_number=int(workers), name="event")
    if kind == "multi_thread":
        # Without a grace period its deadlock check fired while frames were still in flight
        # (graphs ended after 0-16 of 60 frames); 500 ms of confirmed deadlock ends the run.
        return MultiThreadScheduler(app, worker_thread_number=int(workers), check_recession_period_ms=1.0,
                                    stop_on_deadlock_timeout=500, name="multi_thread")
    raise EndofuseError(f"scheduler kind must be one of {', '.join(SCHEDULERS)}, got {kind!r}")


def run_app(app: EndofuseApp, handle_signals: bool = True) -> dict:
    """Run to the end; Ctrl-C / SIGTERM stop the graph, finalise the video and mark the report interrupted.

    Returns the report (also written to the recorder's `report` path). A user error from an operator,
    or a video that could not be finalised, is raised once the graph has stopped, also after a signal.
    """
    cfg = app.sections.get("scheduler", {})
    app.scheduler(make_scheduler(app, cfg.get("kind", "greedy"), cfg.get("workers", 1)))
    tracking = app.sections.get("tracking", {})
    if tracking.get("enabled", True):
        warmup = int(app.sections.get("recorder", {}).get("warmup_frames", 10))
        app.tracker = app.track(num_start_messages_to_skip=warmup, num_last_messages_to_discard=0)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if handle_signals and _main_thread() else None
    interrupted = None
    future = app.run_async()
    try:
        _wait(future, app)
    except KeyboardInterrupt as exc:
        interrupted = exc
        app.request_stop()
        future.result(timeout=30)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    try:
        app.recorder_op.close()  # done already by the recorder's stop() unless the graph never stopped it
    except Exception as exc:  # noqa: BLE001 - raised below, after any earlier error
        app.errors.append(exc)
    if app.errors:
        raise app.errors[0]
    if interrupted is not None:
        raise interrupted
    return app.recorder_op.report()


def _wait(future: concurrent.futures.Future, app: EndofuseApp) -> None:
    """Wait for the graph in Python (where signals are handled), with endofuse's signal handlers in charge.

    Holoscan installs its own SIGINT/SIGTERM handler when a process first runs a graph (before
    any operator starts), and it interrupts the graph at once and logs GXF errors. endofuse stops
    between two frames instead (`request_stop`), so its handlers are put back once the graph runs.
    """
    handlers_back = not _main_thread()  # signal handlers can only be set from the main thread
    while True:
        wli = getattr(app, "wli_op", None)  # compose() runs inside run_async()
        if not handlers_back and wli is not None and wli.epoch is not None:  # the WLI source has started
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if handler is not None:  # None: not set from Python, nothing to put back
                    signal.signal(signum, handler)
            handlers_back = True
        try:
            return future.result(timeout=0.2 if handlers_back else 0.01)
        except concurrent.futures.TimeoutError:
            continue


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def load_config(path: str) -> dict:
    """The YAML config as a dict of sections (one line naming the file on a bad file)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise EndofuseError(f"config '{file}': no such file")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise EndofuseError(f"config '{file}': not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise EndofuseError(f"config '{file}': expected sections {', '.join(SECTIONS)}")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m endofuse.realtime.holoscan.app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the app's YAML (sections named after the operators)")
    args = parser.parse_args(argv)
    from endofuse.realtime.commands.run import quiet_opencv, summary_line

    quiet_opencv()
    quiet_holoscan_logs()
    try:
        sections = load_config(args.config)
        report = run_app(EndofuseApp(sections))
    except KeyboardInterrupt:
        print("endofuse holoscan app: interrupted", file=sys.stderr)
        return 130
    except (EndofuseError, ValueError, FileNotFoundError) as exc:
        print(f"endofuse holoscan app: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
    rec = sections.get("recorder", {}) or {}
    report_path = Path(rec["report"]) if rec.get("report") else None
    print(summary_line(report, rec.get("out"), report_path).replace("endofuse run", "endofuse holoscan app"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
