"""`endofuse run --runtime holoscan`: the same flags, outputs and report keys as the native runtime.

The sources, engine and sinks are opened exactly as `endofuse run` opens them
(so a bad file is the same one-line error before any graph exists), then run
as a Holoscan graph (`EndofuseApp`). The report adds `runtime: "holoscan"` and
`holoscan.flow_tracking_ms`: Holoscan's data-flow-tracking latency per path.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from endofuse.errors import EndofuseError


def default_scheduler(wli, nbi) -> dict:
    """Greedy (one thread, no contention) for recordings; the event-based scheduler for cameras.

    A camera read blocks until the device delivers a frame; on the greedy
    scheduler's single thread that wait would stall the rest of the graph.
    """
    if wli.live or (nbi is not None and nbi.live):
        return {"kind": "event", "workers": 3}
    return {"kind": "greedy", "workers": 1}


def run_holoscan(args: argparse.Namespace) -> int:
    from endofuse.realtime.engines import open_engine
    from endofuse.realtime.holoscan._runtime import quiet_holoscan_logs
    from endofuse.realtime.holoscan.app import EndofuseApp, run_app
    from endofuse.realtime.run_command import Stopped, _stopped_code, stop_on_signals, summary_line, write_report
    from endofuse.realtime.sinks import ImageFolderSink, VideoFileSink
    from endofuse.realtime.source_specs import open_source_pair

    if args.display:
        raise EndofuseError("--display is not available with --runtime holoscan; "
                            "add a HolovizOp after EndofuseOverlayOp in your own graph (see docs/holoscan.md)")
    report_path = Path(args.report) if args.report else None
    quiet_holoscan_logs()
    with stop_on_signals():
        wli, nbi = open_source_pair(args.wli, args.nbi, args.fps, args.frames, args.camera_timeout)
        try:
            engine = open_engine(args.checkpoint, backend=args.engine, device=args.device, model_name=args.model)
            sinks = [VideoFileSink(args.out, wli.fps)] if args.out else []
            if args.frames_dir:
                sinks.append(ImageFolderSink(args.frames_dir, force=getattr(args, "force", False)))
            classifier = None
            if getattr(args, "classifier", None):
                from endofuse.realtime.classifier import FrameClassifier

                classifier = FrameClassifier.open(args.classifier)
            sections = {
                "wli_source": {"source": wli, "frames": args.frames, "live": args.live},
                "nbi_source": {"source": nbi},
                "inference": {"classifier": classifier},
                "overlay": {"alpha": args.alpha, "hud": not args.no_hud},
                "recorder": {"warmup_frames": args.warmup},
                "scheduler": default_scheduler(wli, nbi),
            }
            app = EndofuseApp(sections, engine=engine, sinks=sinks)
        except BaseException as exc:
            for source in (wli, nbi):
                if source is not None:
                    source.close()
            if isinstance(exc, Stopped):
                return _stopped_code(exc)
            raise
        try:
            report = run_app(app, handle_signals=False)
        except Stopped as stop:
            report = app.recorder_op.report() | {"signal": signal.Signals(stop.signum).name}
            write_report(report, report_path)
            print(summary_line(report, args.out, report_path), file=sys.stderr)
            return _stopped_code(stop)
        except EndofuseError as exc:
            # a source failed mid-stream: as natively, the frames so far are kept (.partial) and reported
            report = app.recorder_op.report() | {"complete": False, "error": str(exc),
                                                 "stopped_after_frames": app.recorder_op.frames}
            video = next((str(s.written_path) for s in sinks if getattr(s, "written_path", None)), None)
            if video:
                report["partial_video"] = video
            write_report(report, report_path)
            raise
    write_report(report, report_path)
    print(summary_line(report, args.out, report_path))
    return 0
