"""What the web demo adds on top of the model: one pair segmented in-process vs
the same pair through the demo's HTTP API (upload both PNGs, queue, JPEG/PNG encode,
result stream, download both outputs: what a browser does per click), and
through `gradio_client`, measured interleaved in one run on the same engine.

    python benchmarks/demo_roundtrip.py --engine torch --repeats 20 [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import cv2

from endofuse.machine import time_calls

from _common import add_json_argument, record, report, table


def _interleaved_medians_ms(runs: list, repeats: int) -> list[float]:
    """Median wall time of each callable, run in turn (so a load change on a shared machine hits all alike)."""
    for run in runs:
        run()  # the first call pays lazy initialisation; not counted
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, bucket in zip(runs, times, strict=True):
            bucket += time_calls(run, 1)
    return [statistics.median(bucket) for bucket in times]


def http_segment(http, wli_path: Path, nbi_path: Path, model_label: str, backend: str) -> str:
    """One click's worth of HTTP: upload, call /segment, read the result stream, download the images."""
    pngs = [("files", wli_path.read_bytes()), ("files", nbi_path.read_bytes())]
    uploaded = http.post("/gradio_api/upload", files=pngs)
    files = [{"path": path, "meta": {"_type": "gradio.FileData"}} for path in uploaded.json()]
    event = http.post("/gradio_api/call/segment", json={"data": [*files, 0.45, model_label, backend]}).json()
    stream = http.get(f"/gradio_api/call/segment/{event['event_id']}").text
    if "event: complete" not in stream:
        raise RuntimeError(f"/segment failed: {stream[-500:]}")
    outputs = json.loads(stream.split("event: complete\ndata: ", 1)[1].splitlines()[0])
    for image in outputs[:2]:
        http.get(image["url"]).raise_for_status()
    return outputs[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the bundled demo weights")
    parser.add_argument("--engine", default="torch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", default="360x400",
                        help="HxW of the synthetic pair (real frames: 805x832 up to 1078x1727)")
    add_json_argument(parser)
    args = parser.parse_args(argv)

    import httpx
    from gradio_client import Client, handle_file

    from endofuse.demo.app import build_app, launch_app
    from endofuse.demo.engines import model_choices
    from endofuse.demo.examples import write_example_pairs
    from endofuse.realtime import segment_pair
    from endofuse.realtime.engines import open_engine

    work = Path(tempfile.mkdtemp(prefix="endofuse-bench-"))
    height, width = (int(v) for v in args.size.lower().split("x"))
    wli_path, nbi_path = write_example_pairs(work / "pair", seeds=(0,), size=(height, width))[0]
    engine = open_engine(args.checkpoint, backend=args.engine)
    # The app serves the very same engine object: the difference is the web layer only.
    app = build_app(args.checkpoint, args.engine, opener=lambda *_, **__: engine, examples_dir=work / "examples",
                    output_dir=work / "out")
    _, url, _ = launch_app(app, port=None, block=False)
    try:
        label = model_choices(args.checkpoint)[0].label
        wli, nbi = cv2.imread(str(wli_path)), cv2.imread(str(nbi_path))
        client = Client(url, verbose=False)
        with httpx.Client(base_url=url.rstrip("/"), timeout=60) as http:
            direct, raw, via_client = _interleaved_medians_ms([
                lambda: segment_pair(engine, wli, nbi),
                lambda: http_segment(http, wli_path, nbi_path, label, args.engine),
                lambda: client.predict(handle_file(str(wli_path)), handle_file(str(nbi_path)), 0.45, label,
                                       args.engine, api_name="/segment"),
            ], args.repeats)
    finally:
        app.close()
    size = f"{wli.shape[1]}x{wli.shape[0]}"
    rows = [["segment_pair in-process", direct, None, None],
            ["HTTP API, one click's requests (loopback)", raw, raw - direct, raw / direct],
            ["gradio_client.predict (loopback)", via_client, via_client - direct, via_client / direct]]
    tab = table(f"{size} pair, engine {engine.name}, {engine.model_label}, medians of {args.repeats} interleaved runs",
                ["path", "median ms", "added ms", "x in-process"], rows)
    report(record("demo_roundtrip", "Demo: what the web layer adds per click", [tab], argv), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
