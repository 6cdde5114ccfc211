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


def run_holoscan(args: argparse.Namespace) -> int:
    """`endofuse run` on the Holoscan graph; the setup, stop and report steps are the native runtime's."""
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
    from endofuse.realtime.input.source_specs import open_source_pair
    from endofuse.realtime.output.overlay import OverlayStyle

    if args.display:
        raise EndofuseError("--display is not available with --runtime holoscan; "
                            "add a HolovizOp after EndofuseOverlayOp in your own graph (see docs/holoscan.md)")
    OverlayStyle(alpha=args.alpha)  # checks alpha before any work, as natively
    quiet_holoscan_logs()
    with stop_on_signals():
        try:
            wli, nbi = open_source_pair(args.wli, args.nbi, args.fps, args.frames, args.camera_timeout)
        except Stopped as stop:
            return abandon_setup(stop)
        try:
            engine, sinks, classifier = open_run_parts(args, wli)
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
            return abandon_setup(exc, wli, nbi)
        try:
            # a signal raises Stopped in this (main) thread while it waits for the graph, never inside an
            # operator; run_app then stops the graph and finalises the video before re-raising it
            report = run_app(app, handle_signals=False)
        except Stopped as stop:
            return finish_interrupted(app.recorder_op.report(), stop.signum, sinks, args)
        except EndofuseError as exc:
            report_failure(app.recorder_op.report(), exc, app.recorder_op.frames, sinks, args)
            raise
    return finish_run(report, args)
