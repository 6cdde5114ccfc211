"""The case folder's review.html: one self-contained page (images inline, no script or font from elsewhere).

A timeline of the lesion events over the run, per event its key frames (raw crop, overlay, mask, the NBI
view) and fields for the clinician: the ELS 2016 vessel classification (longitudinal vs perpendicular
vessel changes), the Ni classification (types I-V) and notes. "Save findings" downloads findings.json
(the browser's own download: nothing is sent anywhere).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2

from endofuse.outputs import atomic_write_text

ELS_CHOICES = ("", "longitudinal vessels (benign pattern)", "perpendicular vessels (suspicious pattern)",
               "not assessable")
NI_CHOICES = ("", "I", "II", "III", "IV", "Va", "Vb", "Vc")
TIMELINE_WIDTH = 800
THUMBNAIL_HEIGHT = 240

STYLE = """
body{font:14px system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px} h2{font-size:16px;margin:24px 0 6px}
.meta{color:#555} .note{background:#fff4d6;padding:6px 10px;border-radius:4px}
.frames{display:flex;gap:8px;flex-wrap:wrap} figure{margin:0} figcaption{font-size:12px;color:#555}
.frames img{height:160px;border:1px solid #ccc} .event{border-top:1px solid #ddd;padding-top:8px}
label{display:inline-block;margin:6px 12px 0 0} textarea{width:100%;height:48px}
svg text{font-size:11px}
"""

SCRIPT = """
function saveFindings(){
  const findings={case_recorded_at:document.body.dataset.recorded,events:[]};
  document.querySelectorAll('.event').forEach(e=>findings.events.push({id:+e.dataset.id,
    els:e.querySelector('.els').value,ni:e.querySelector('.ni').value,notes:e.querySelector('.notes').value}));
  const a=document.createElement('a');
  a.href=URL.createObjectURL(new Blob([JSON.stringify(findings,null,1)],{type:'application/json'}));
  a.download='findings.json';a.click();
}
"""


def _thumbnail(folder: Path, name: str) -> str:
    """A JPEG thumbnail inline (the page stays small and self-contained; the PNG beside it is the record)."""
    image = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
    scale = THUMBNAIL_HEIGHT / image.shape[0]
    if scale < 1:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)), THUMBNAIL_HEIGHT),
                           interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return f"data:image/jpeg;base64,{base64.b64encode(data.tobytes()).decode('ascii')}"


def _select(cls: str, choices) -> str:
    options = "".join(f"<option>{html.escape(c)}</option>" for c in choices)
    return f'<select class="{cls}">{options}</select>'


def timeline_svg(events: list[dict], duration_s: float) -> str:
    """One bar per event on the run's time axis."""
    scale = TIMELINE_WIDTH / max(duration_s, 1e-6)
    bars = [f'<rect x="0" y="18" width="{TIMELINE_WIDTH}" height="14" fill="#eee"/>']
    for event in events:
        x, w = event["start_s"] * scale, max(2.0, event["duration_s"] * scale)
        bars.append(f'<rect class="event-bar" data-id="{event["id"]}" x="{x:.1f}" y="18" width="{w:.1f}" '
                    f'height="14" fill="#d33"><title>event {event["id"]}: {event["start_s"]:.1f}-'
                    f'{event["end_s"]:.1f} s</title></rect>')
        bars.append(f'<text x="{x:.1f}" y="12">{event["id"]}</text>')
    bars.append(f'<text x="0" y="46">0 s</text><text x="{TIMELINE_WIDTH - 40}" y="46">{duration_s:.1f} s</text>')
    return f'<svg class="timeline" width="{TIMELINE_WIDTH}" height="50">{"".join(bars)}</svg>'


def render_review_page(folder: str | Path, record: dict) -> str:
    """review.html's text for the case folder `folder` and its case.json content `record`."""
    folder = Path(folder)
    frames = record.get("frames", {})
    duration = frames.get("count", 0) / frames.get("fps", 30.0) if frames.get("fps") else 0.0
    events = record.get("events", [])
    parts = [f"<h1>endofuse case record</h1><p class='meta'>recorded {html.escape(record.get('recorded_at', ''))}"
             f" &middot; {frames.get('count', 0)} frames &middot; model {html.escape(str(record.get('model', '')))}"
             f" &middot; engine {html.escape(str(record.get('engine', '')))} &middot; endofuse "
             f"{html.escape(record['software']['version'])}</p>",
             "<p class='note'>AI suggestions for review, not a diagnosis. Images are the endoscopic image only "
             "(the processor's on-screen text is cropped away).</p>",
             f"<h2>Timeline ({len(events)} lesion event{'s' if len(events) != 1 else ''})</h2>",
             timeline_svg(events, duration)]
    for event in events:
        figures = []
        for key in event["key_frames"]:
            for part in ("raw", "overlay", "mask"):
                if part in key:
                    caption = f"{key['kind'].upper()} {part}, frame {key['frame']} ({key['time_s']:.2f} s)"
                    figures.append(f'<figure><a href="{html.escape(key[part])}"><img alt="{html.escape(caption)}" '
                                   f'src="{_thumbnail(folder, key[part])}"></a>'
                                   f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append(
            f'<div class="event" data-id="{event["id"]}"><h2>Event {event["id"]}: {event["start_s"]:.2f}-'
            f'{event["end_s"]:.2f} s ({event["duration_s"]:.2f} s, peak {event["peak_area_px"]} px, '
            f'modes {html.escape(", ".join(event["modes"]))})</h2><div class="frames">{"".join(figures)}</div>'
            f"<label>ELS 2016 {_select('els', ELS_CHOICES)}</label>"
            f"<label>Ni classification {_select('ni', NI_CHOICES)}</label>"
            f'<label style="display:block">Notes<textarea class="notes"></textarea></label></div>')
    parts.append('<p><button onclick="saveFindings()">Save findings</button></p>')
    recorded = html.escape(record.get("recorded_at", ""), quote=True)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>endofuse case</title>"
            f"<style>{STYLE}</style></head><body data-recorded=\"{recorded}\">{''.join(parts)}"
            f"<script>{SCRIPT}</script></body></html>")


def write_review_page(folder: str | Path, record: dict) -> Path:
    path = Path(folder) / "review.html"
    atomic_write_text(path, render_review_page(folder, record))
    return path
