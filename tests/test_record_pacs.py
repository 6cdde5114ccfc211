"""`endofuse dicom --send` against a real Orthanc started on loopback: every object reads back intact through
Orthanc's REST API, a re-send skips what is stored, and a refusing or absent PACS is one line and exit 1."""
from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
pytest.importorskip("pynetdicom", reason="the [dicom] extra is not installed")
pytest.importorskip("av", reason="PyAV (the H.264 encoder of the [dicom] extra) is not installed")

from test_record_dicom import make_case  # noqa: E402

from endofuse.cli import main  # noqa: E402

PACS_AET, OUR_AET = "ORTHANC", "ENDOFUSE"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    """A fresh Orthanc (Debian package `orthanc`) on free ports: HTTP for loopback only, DICOM stores accepted only
    from our AE title at 127.0.0.1 (this Orthanc version has no DICOM bind address). Stopped at the end."""
    binary = shutil.which("Orthanc")
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc; .ci/run does)")
    root = tmp_path_factory.mktemp("orthanc")
    http, dicom = _free_port(), _free_port()
    config = {"Name": "endofuse-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
              "HttpPort": http, "DicomPort": dicom, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomAet": PACS_AET, "DicomCheckCalledAet": True, "DicomAlwaysAllowEcho": False,
              "DicomAlwaysAllowStore": False, "DicomCheckModalityHost": True,
              "DicomModalities": {"endofuse": [OUR_AET, "127.0.0.1", 104]}, "Plugins": [],
              "StorageCompression": False}
    (root / "orthanc.json").write_text(json.dumps(config))
    log = open(root / "orthanc.log", "w")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{http}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/system", timeout=1).read()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"Orthanc exited: {(root / 'orthanc.log').read_text()[-500:]}")
                time.sleep(0.1)
        else:
            pytest.fail("Orthanc did not answer on its REST port within 10 s")
        yield url, dicom
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _rest(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


def test_send_stores_every_object_intact(orthanc, tmp_path, capsys):
    url, port = orthanc
    make_case(tmp_path / "case")
    argv = ["dicom", str(tmp_path / "case"), "--out", str(tmp_path / "out"), "--send", f"127.0.0.1:{port}",
            "--aet", OUR_AET, "--called-aet", PACS_AET]
    assert main(argv) == 0
    local = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, sorted((tmp_path / "out").glob("*.dcm")))}
    assert f"stored {len(local)}, already in the PACS 0" in capsys.readouterr().out
    stored = {}
    for orthanc_id in json.loads(_rest(f"{url}/instances")):
        ds = pydicom.dcmread(io.BytesIO(_rest(f"{url}/instances/{orthanc_id}/file")))
        stored[ds.SOPInstanceUID] = ds
    assert set(stored) == set(local) and len(local) == 8
    for uid, mine in local.items():
        theirs = stored[uid]
        assert theirs.SOPClassUID == mine.SOPClassUID
        assert theirs.file_meta.TransferSyntaxUID == mine.file_meta.TransferSyntaxUID
        assert theirs.PixelData == mine.PixelData  # pixels, masks and the H.264 stream byte for byte
        if mine.SOPClassUID != "1.2.840.10008.5.1.4.1.1.77.1.1.1":
            assert np.array_equal(theirs.pixel_array, mine.pixel_array)
    # a re-send finds everything in the PACS
    assert main(argv) == 0
    assert f"stored 0, already in the PACS {len(local)}" in capsys.readouterr().out


@pytest.mark.parametrize("called, aet, port_of, message", [
    ("WRONG", OUR_AET, "pacs", "refused the association"),
    (PACS_AET, "INTRUDER", "pacs", "refused the association"),
    (PACS_AET, OUR_AET, "closed", "cannot be reached"),
])
def test_refused_or_absent_pacs_is_one_line(orthanc, tmp_path, capsys, called, aet, port_of, message):
    _, port = orthanc
    make_case(tmp_path / "case")
    port = port if port_of == "pacs" else _free_port()
    assert main(["dicom", str(tmp_path / "case"), "--out", str(tmp_path / "out"), "--send", f"127.0.0.1:{port}",
                 "--aet", aet, "--called-aet", called, "--timeout", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("endofuse dicom: error: PACS")
    assert len(list((tmp_path / "out").glob("*.dcm"))) == 8  # nothing lost locally
