"""The "Case" tab: the case record of the last processed endoscope recording - timeline, key frames, the review
page and a DICOM export (`endofuse dicom`, de-identified placeholders) to download."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from endofuse.errors import EndofuseError


def show_case(case_dir) -> tuple:
    """(timeline HTML, key frames [(path, caption)], events text, review.html path) of a case folder."""
    from endofuse.realtime.record.case import load_case
    from endofuse.realtime.record.review import timeline_svg

    if not case_dir:
        raise gr.Error("Process a recording in the \"Endoscope recording\" tab first: its case appears here.")
    case = Path(case_dir)
    try:
        record = load_case(case)
    except EndofuseError as exc:
        raise gr.Error(str(exc)) from exc
    frames = record["frames"]
    events = record["events"]
    timeline = timeline_svg(events, frames["count"] / frames["fps"])
    key_frames, lines = [], []
    for event in events:
        lines.append(f"**Event {event['id']}**: {event['start_s']:.2f}-{event['end_s']:.2f} s "
                     f"({event['duration_s']:.2f} s), peak {event['peak_area_px']} px, "
                     f"modes {', '.join(event['modes'])}")
        for key in event["key_frames"]:
            part = "overlay" if "overlay" in key else "raw"
            key_frames.append((str(case / key[part]), f"event {event['id']}: {key['kind'].upper()} {part}, "
                                                      f"frame {key['frame']}"))
    text = "\n\n".join(lines) or "No lesion was shown for the minimum on-time: no events."
    return timeline, key_frames, text, str(case / "review.html")


def export_case(case_dir, out_root: Path) -> str:
    """The case's DICOM objects (placeholders for the patient) as one zip to download."""
    from endofuse.realtime.commands.dicom import check_dicom_extra

    if not case_dir:
        raise gr.Error("Process a recording in the \"Endoscope recording\" tab first.")
    try:
        check_dicom_extra()
        from endofuse.realtime.record.dicom import StudyInfo, write_case_dicom

        out = Path(tempfile.mkdtemp(prefix="dicom-", dir=out_root))
        (out / "dicom").mkdir()
        write_case_dicom(case_dir, out / "dicom", StudyInfo())
    except EndofuseError as exc:
        raise gr.Error(str(exc)) from exc
    return shutil.make_archive(str(out / "case-dicom"), "zip", out / "dicom")

