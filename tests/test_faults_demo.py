"""Demo limits: the product's size message for decompression bombs, no server-side fetch of client URLs,
a per-client upload budget with prompt cleanup, and one-line errors for a busy port or a foreign host."""
import asyncio
import socket
import struct
import zlib

import pytest

gr = pytest.importorskip("gradio")

from endofuse import cli  # noqa: E402
from endofuse.checks import check_listen_address  # noqa: E402
from endofuse.demo import uploads  # noqa: E402
from endofuse.errors import EndofuseError  # noqa: E402


def png_header_only(path, width, height):
    """A PNG whose header announces width x height (a decompression bomb needs no real pixels to test)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 5000])
def test_huge_images_get_the_products_size_message(side, tmp_path):
    """20000^2 trips PIL's bomb guard when opened, 5000^2 only the demo's own limit: one message for both."""
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    image = uploads.checked_image(label="WLI image", type="numpy")
    payload = gr.FileData(path=str(bomb), orig_name="bomb.png")
    with pytest.raises(gr.Error, match=rf"WLI image upload 'bomb.png' .*at most {uploads.MAX_IMAGE_SIDE} pixels"):
        image.preprocess(payload)


def test_a_client_named_url_is_refused_without_any_lookup(monkeypatch):
    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: looked_up.append(a) or [])
    components = (uploads.checked_image(label="WLI image"), uploads.refuse_remote_files(gr.File(label="WLI video")))
    for component in components:
        with pytest.raises(gr.Error, match="only uploaded files are accepted"):
            asyncio.run(component.async_move_resource_to_block_cache("https://example.com/frame.png"))
    assert looked_up == []


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def post_upload(middleware, size, client="10.0.0.5", path="/gradio_api/upload"):
    """(status, reached the app) for one POST through the middleware."""
    sent, reached = [], []

    async def app(scope, receive, send):
        reached.append(scope["path"])

    async def send(message):
        sent.append(message)

    headers = [] if size is None else [(b"content-length", str(size).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": (client, 1234)}
    middleware.app = app
    asyncio.run(middleware(scope, None, send))
    return (sent[0]["status"] if sent else 200), bool(reached)


def test_upload_budget_per_client_over_a_sliding_window():
    clock = Clock()
    budget = uploads.UploadBudget(None, budget_bytes=1000, window_s=60, clock=clock)
    assert post_upload(budget, 600) == (200, True)
    assert post_upload(budget, 600) == (429, False)  # 1200 > 1000 within the window
    assert post_upload(budget, 600, client="10.0.0.6") == (200, True)  # another client has its own budget
    assert post_upload(budget, None) == (411, False)  # the size must be known before the body is read
    assert post_upload(budget, 10**9, path="/gradio_api/queue/join") == (200, True)  # only uploads count
    clock.now = 61
    assert post_upload(budget, 600) == (200, True)  # the first upload has left the window


def test_the_served_app_has_the_budget_and_prompt_cleanup(monkeypatch):
    from endofuse.demo.app import launch_app

    seen = {}
    blocks = gr.Blocks(delete_cache=(uploads.UPLOAD_SWEEP_S, uploads.UPLOAD_MAX_AGE_S))
    monkeypatch.setattr(blocks, "launch", lambda **kwargs: seen.update(kwargs))
    launch_app(blocks, port=7000, block=False)
    assert [m.cls for m in seen["app_kwargs"]["middleware"]] == [uploads.UploadBudget]
    from endofuse.demo import app as demo_app

    assert "delete_cache=(UPLOAD_SWEEP_S, UPLOAD_MAX_AGE_S)" in open(demo_app.__file__).read()
    assert uploads.UPLOAD_MAX_AGE_S <= 15 * 60


def test_a_port_in_use_and_a_foreign_host_are_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(EndofuseError, match=f"--port {port} is already in use"):
            check_listen_address("127.0.0.1", port)
        rc = cli.main(["demo", "--port", str(port)])
        err = capsys.readouterr().err
        assert rc == 1 and err.count("\n") == 1 and "already in use" in err
    with pytest.raises(EndofuseError, match="not an address of this machine"):
        check_listen_address("192.0.2.1", 7860)  # TEST-NET-1: never a local address
    with pytest.raises(EndofuseError, match="not an IP address"):
        check_listen_address("demo.example.com", 7860)
