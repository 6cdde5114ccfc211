"""When each frame of a recording was taken: the container's own timestamps where it has usable ones.

A variable-frame-rate recording timed as index / average fps drifts from the
truth by up to hundreds of milliseconds, so a WLI frame would be fused with
the wrong NBI frame. How a source was timed is reported per stream
(`report.json` `timing`):

* `container`: the file's per-frame timestamps;
* `nominal-fps`: index / the frame rate the file or `--fps` announces;
* `fallback-fps`: index / 30 fps, because the file has no usable timing
  (frame durations of 0, timestamps that do not increase, an absurd rate);
* `capture-clock`: a live source, timed when each frame arrives.

MP4/MOV keep every frame's duration in their sample table (`stts`, display
order from `ctts`), read here directly: where those durations are all 0,
FFmpeg invents them (each frame as long as the whole clip, so a 2 s clip
"plays" at 0.5 fps), and a decoder's timestamps cannot be trusted. Other
containers (Matroska, AVI, ...) are timed by the decoder's timestamp of each
frame as it is read.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

CONTAINER, NOMINAL_FPS, FALLBACK_FPS, CAPTURE_CLOCK = "container", "nominal-fps", "fallback-fps", "capture-clock"
TIMINGS = (CONTAINER, NOMINAL_FPS, FALLBACK_FPS, CAPTURE_CLOCK)

MP4_TOP_LEVEL = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"uuid", b"pdin", b"meta"}
MAX_MOOV_BYTES = 256 << 20  # a sample table this large is not a file we can time cheaply


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """(type, payload start, box end) of the ISO-BMFF boxes in data[start:end]."""
    end = len(data) if end is None else end
    while start + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, start + 8)[0], 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            return
        yield kind, start + header, start + size
        start += size


def _child(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _read_moov(path: Path) -> bytes | None:
    """The `moov` box of an MP4/MOV file (top-level boxes are skipped by seeking), or None."""
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        at = 0
        while at + 8 <= file_size:
            f.seek(at)
            header = f.read(16)
            size, kind = struct.unpack_from(">I4s", header)
            if kind not in MP4_TOP_LEVEL:
                return None  # not an MP4/MOV file (or damaged): the decoder's timestamps decide
            head = 8
            if size == 1:
                size, head = struct.unpack_from(">Q", header, 8)[0], 16
            elif size == 0:
                size = file_size - at
            if size < head:
                return None
            if kind == b"moov":
                if size > MAX_MOOV_BYTES:
                    return None
                f.seek(at)
                return f.read(size)
            at += size
    return None


def mp4_frame_times(path: str | os.PathLike) -> list[float] | None:
    """Presentation times in seconds (the first frame at 0, display order) of the first video track of an
    MP4/MOV file, from its sample table; None when the file is not one or keeps its samples elsewhere
    (fragmented MP4)."""
    try:
        moov = _read_moov(Path(path))
    except (OSError, struct.error):
        return None
    if moov is None or _child(moov, 8, len(moov), b"mvex") is not None:
        return None
    try:
        for kind, start, end in _boxes(moov, 8):
            if kind == b"trak":
                times = _video_track_times(moov, start, end)
                if times is not None:
                    return times
    except struct.error:
        return None
    return None


def _video_track_times(data: bytes, start: int, end: int) -> list[float] | None:
    mdia = _child(data, start, end, b"mdia")
    if mdia is None:
        return None
    hdlr, mdhd = _child(data, *mdia, b"hdlr"), _child(data, *mdia, b"mdhd")
    if hdlr is None or mdhd is None or data[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
        return None
    version = data[mdhd[0]]
    timescale = struct.unpack_from(">I", data, mdhd[0] + (20 if version == 1 else 12))[0]
    stbl = _child(data, *(_child(data, *mdia, b"minf") or (0, 0)), b"stbl")
    stts = _child(data, *stbl, b"stts") if stbl else None
    if not timescale or stts is None:
        return None
    decode, t = [], 0
    for i in range(struct.unpack_from(">I", data, stts[0] + 4)[0]):
        count, delta = struct.unpack_from(">II", data, stts[0] + 8 + 8 * i)
        for _ in range(count):
            decode.append(t)
            t += delta
    offsets = [0] * len(decode)
    ctts = _child(data, *stbl, b"ctts")
    if ctts is not None:  # B-frames: shown in another order than decoded
        k = 0
        for i in range(struct.unpack_from(">I", data, ctts[0] + 4)[0]):
            count, offset = struct.unpack_from(">Ii", data, ctts[0] + 8 + 8 * i)
            for _ in range(count):
                if k < len(offsets):
                    offsets[k], k = offset, k + 1
    shown = sorted(d + o for d, o in zip(decode, offsets, strict=True))
    if not shown:
        return None
    return [(p - shown[0]) / timescale for p in shown]


def strictly_increasing(times: list[float]) -> bool:
    return len(times) >= 2 and all(b > a for a, b in zip(times, times[1:], strict=False))


def timing_report(wli, nbi=None, one_stream: bool = False) -> dict:
    """The report's `timing`: how each stream was timed ({"wli", "nbi"}, or {"endoscope"} for one stream).

    The same for both runtimes; a source without a `timing` (a Holoscan port fed from elsewhere) reads None.
    """
    if one_stream:
        return {"endoscope": getattr(wli, "timing", None)}
    return {"wli": getattr(wli, "timing", None), "nbi": None if nbi is None else getattr(nbi, "timing", None)}
