"""`endofuse run --runtime holoscan`: the same flags, outputs and report keys as the native runtime.

The sources, engine and sinks are opened exactly as `endofuse run` opens them
(so a bad file is the same one-line error before any graph exists), then run
as a Holoscan graph (`EndofuseApp`). The report adds `runtime: "holoscan"` and
`holoscan.flow_tracking_ms`: Holoscan's data-flow-tracking latency per path.
"""
from __future__ import annotations

import argparse

from endofuse.errors import EndofuseError


def default_scheduler(wli, nbi) -> dict:
    """Greedy (one thread, no contention) for recordings; the event-based scheduler for cameras.

    A camera read blocks until the device delivers a frame; on the greedy
    scheduler's single thread that wait would stall the rest of the graph.
    """
    if wli.live or (nbi is not None and nbi.live):
        return {"kind": "event", "workers": 3}
    return {"kind": "greedy", "workers": 1}


def run_holoscan(args: argparse.Namespace, endoscope=None) -> int:
    """`endofuse run` on the Holoscan graph; the setup, stop and report steps are the native runtime's.

    `endoscope`: the `EndoscopeConfig` of `--endoscope SRC` (one stream carrying both modes), else None.
    """
    from endofuse.realtime.commands.run import (
        Stopped,
        abandon_setup,
        finish_interrupted,
        finish_run,
        open_run_parts,
        report_failure,
        stop_on_signals,
    )
    from endofuse.realtime.holoscan._runtime import quiet_holoscan_logs
    from endofuse.realtime.holoscan.app import EndofuseApp, run_app
    from endofuse.realtime.input.source_specs import open_endoscope_source, open_source_pair
    from endofuse.realtime.output.overlay import OverlayStyle
    from endofuse.realtime.output.stabilise import config_from_args

    if args.display:
        raise EndofuseError("--display is not available with --runtime holoscan; "
                            "add a HolovizOp after EndofuseOverlayOp in your own graph (see docs/holoscan.md)")
    OverlayStyle(alpha=args.alpha)  # checks alpha before any work, as natively
    stabilise = config_from_args(args)
    quiet_holoscan_logs()
    with stop_on_signals() as signals:
        try:
            if endoscope is None:
                wli, nbi = open_source_pair(args.wli, args.nbi, args.fps, args.frames, args.camera_timeout)
            else:
                wli, nbi = open_endoscope_source(args.endoscope, args.fps, args.frames, args.camera_timeout), None
        except Stopped as stop:
            return abandon_setup(stop)
        try:
            engine, sinks, classifier = open_run_parts(args, wli)
            wli.stamp_code = args.frame_code  # the recorder reads the codes back from the frames it writes
            sections = {
                "wli_source": {"source": wli, "frames": args.frames, "live": args.live},
                "nbi_source": {"source": nbi},
                "inference": {"classifier": classifier},
                "overlay": {"alpha": args.alpha, "hud": not args.no_hud, "stabilise": stabilise,
                            "overlay_timing": args.overlay_timing},
                "recorder": {"warmup_frames": args.warmup},
                "scheduler": default_scheduler(wli, nbi),
            }
            if endoscope is not None:
                sections["endoscope"] = {"config": endoscope}
            app = EndofuseApp(sections, engine=engine, sinks=sinks)
            signals.stop_by(app.request_stop)  # last: until here a signal raises Stopped, no frame is in flight
        except BaseException as exc:
            return abandon_setup(exc, wli, nbi)
        try:
            report = run_app(app, handle_signals=False)  # a signal ends it between two frames, as natively
        except EndofuseError as exc:
            report_failure(app.recorder_op.report(), exc, app.recorder_op.frames, sinks, args, signals.signum)
            raise
        if signals.signum is not None:
            return finish_interrupted(report, signals.signum, sinks, args)
    return finish_run(report, args)
