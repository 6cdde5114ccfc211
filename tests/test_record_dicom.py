"""`endofuse dicom`: the objects of a case folder - SOP classes, required attributes, pixels equal to the case's
images, the SEG's references and geometry, the video's transfer syntax and single fragment - and validation."""
from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom", reason="the [dicom] extra is not installed")
pytest.importorskip("highdicom", reason="the [dicom] extra is not installed")
av = pytest.importorskip("av", reason="PyAV (the H.264 encoder of the [dicom] extra) is not installed")

from endofuse.cli import main  # noqa: E402
from endofuse.realtime.input.content_area import ContentArea  # noqa: E402
from endofuse.realtime.pairing.nbi_memory import FUSED_MEMORY, NBI_VIEW  # noqa: E402
from endofuse.realtime.pipeline import FrameResult  # noqa: E402
from endofuse.realtime.record.case import CaseRecorder, load_case  # noqa: E402
from endofuse.realtime.record.dicom import H264_HIGH_41, VIDEO_ENDOSCOPIC, VL_ENDOSCOPIC  # noqa: E402
from endofuse.realtime.segment import WLI_ONLY  # noqa: E402

SEG = "1.2.840.10008.5.1.4.1.1.66.4"
AREA = ContentArea(100, 10, 120, 100)


def make_case(folder, seed: int = 0) -> dict:
    """A small recorded case without a model: 20 frames of 130x240, two lesion events (the second fused with the
    NBI frame 8), content area 120x100 at (100, 10)."""
    rng = np.random.default_rng(seed)
    recorder = CaseRecorder(folder, fps=30.0, min_frames=3, info={"model": "test model", "engine": "test"})
    plan = [WLI_ONLY] * 6 + [WLI_ONLY] + [NBI_VIEW] * 2 + [FUSED_MEMORY] * 6 + [WLI_ONLY] * 5
    for i, mode in enumerate(plan):
        frame = np.zeros((130, 240, 3), np.uint8)
        frame[10:110, 100:220] = rng.integers(40, 220, (100, 120, 3), dtype=np.uint8)
        frame[5:20, 5:60] = 255  # on-screen text
        mask = np.zeros(frame.shape[:2], np.uint8)
        if mode != NBI_VIEW and i not in (6, 15, 16, 17, 18, 19):
            mask[30 + i:70, 120:180 - i] = 1
        result = FrameResult(i, frame.copy(), mask, mode, {}, 1.0, frame, "missing",
                             nbi_index=8 if mode == FUSED_MEMORY else None,
                             extras={"time_s": i / 30, "modality": "NBI" if mode == NBI_VIEW else "WLI",
                                     "quality_flags": (), "content_area": AREA})
        recorder.write(result)
    recorder.close()
    return load_case(folder)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom")
    record = make_case(root / "case")
    assert main(["dicom", str(root / "case"), "--out", str(root / "out"), "--patient-id", "P-1", "--patient-name",
                 "Doe^Jane", "--accession-number", "ACC7", "--study-uid", "1.2.826.0.1.3680043.10.1.7"]) == 0
    objects = {p.name: pydicom.dcmread(p) for p in sorted((root / "out").glob("*.dcm"))}
    return root, record, objects


def test_objects_and_attributes(exported):
    root, record, objects = exported
    assert [len(e["key_frames"]) for e in record["events"]] == [1, 2]  # the second event also has its NBI view
    assert sorted(objects) == ["overlay_event01_wli.dcm", "overlay_event02_wli.dcm", "raw_event01_wli.dcm",
                               "raw_event02_nbi.dcm", "raw_event02_wli.dcm", "seg_event01_wli.dcm",
                               "seg_event02_wli.dcm", "video.dcm"]
    classes = {name: ds.SOPClassUID for name, ds in objects.items()}
    assert {classes[n] for n in objects if n.startswith(("raw", "overlay"))} == {VL_ENDOSCOPIC}
    assert {classes[n] for n in objects if n.startswith("seg")} == {SEG} and classes["video.dcm"] == VIDEO_ENDOSCOPIC
    for ds in objects.values():
        assert ds.PatientID == "P-1" and str(ds.PatientName) == "Doe^Jane" and ds.AccessionNumber == "ACC7"
        assert ds.StudyInstanceUID == "1.2.826.0.1.3680043.10.1.7" and ds.Modality in ("ES", "SEG")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID and "PatientIdentityRemoved" not in ds
    assert len({ds.SOPInstanceUID for ds in objects.values()}) == len(objects)
    series = {ds.SeriesInstanceUID for n, ds in objects.items() if n.startswith("raw")}
    assert len(series) == 1 and series.isdisjoint({ds.SeriesInstanceUID for n, ds in objects.items()
                                                   if not n.startswith("raw")})


def test_key_frame_pixels_and_overlay_reference(exported):
    root, record, objects = exported
    case = root / "case"
    for event in record["events"]:
        for key in event["key_frames"]:
            stem = f"event{event['id']:02d}_{key['kind']}"
            raw = objects[f"raw_{stem}.dcm"]
            assert raw.PhotometricInterpretation == "RGB" and (raw.Rows, raw.Columns) == (100, 120)
            assert np.array_equal(raw.pixel_array, cv2.imread(str(case / key["raw"]))[..., ::-1])
            if key["kind"] == "wli":
                overlay = objects[f"overlay_{stem}.dcm"]
                assert np.array_equal(overlay.pixel_array, cv2.imread(str(case / key["overlay"]))[..., ::-1])
                assert overlay.SourceImageSequence[0].ReferencedSOPInstanceUID == raw.SOPInstanceUID
                assert list(overlay.ImageType)[:2] == ["DERIVED", "SECONDARY"]


def test_seg_references_the_raw_key_frames(exported):
    root, record, objects = exported
    for event in record["events"]:
        key = next(k for k in event["key_frames"] if k["kind"] == "wli")
        raw, seg = objects[f"raw_event{event['id']:02d}_wli.dcm"], objects[f"seg_event{event['id']:02d}_wli.dcm"]
        referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert referenced == {raw.SOPInstanceUID}
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == raw.SeriesInstanceUID
        assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (raw.Rows, raw.Columns, 1)
        derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
        assert derivation.ReferencedSOPInstanceUID == raw.SOPInstanceUID
        mask = cv2.imread(str(root / "case" / key["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        assert np.array_equal(seg.pixel_array.astype(bool), mask) and mask.any()
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "endofuse" and seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
        assert "test model" in str(algorithm.AlgorithmParameters)


def test_video_is_h264_in_one_fragment(exported):
    root, record, objects = exported
    from pydicom.encaps import generate_fragments

    video = objects["video.dcm"]
    assert video.file_meta.TransferSyntaxUID == H264_HIGH_41 and video.PhotometricInterpretation == "YBR_PARTIAL_420"
    fragments = list(generate_fragments(video.PixelData))
    assert len(fragments) == 2 and fragments[0] == b""  # an empty basic offset table, then the whole stream
    stream = fragments[1]
    assert stream[:4] == b"\x00\x00\x00\x01" and stream[4] & 0x1F == 7  # Annex B, starting with the SPS
    assert stream[5] == 100 and stream[7] == 41  # profile_idc High, level_idc 4.1
    path = root / "stream.h264"
    path.write_bytes(stream.rstrip(b"\x00") if len(stream) % 2 else stream)
    with av.open(str(path), format="h264") as container:  # an independent decode of the stored stream
        decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(decoded) == int(video.NumberOfFrames) == record["frames"]["count"] == 20
    assert decoded[0].shape == (video.Rows, video.Columns, 3) == (100, 120, 3)
    capture = cv2.VideoCapture(str(root / "case" / "overlay.mp4"))
    first = capture.read()[1]
    capture.release()
    luma = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in (first, decoded[0])]
    assert cv2.PSNR(*luma) > 30  # the case video, re-encoded (4:2:0 halves the noise-like test image's chroma)


def test_validator_accepts_every_object(exported):
    root, _, objects = exported
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    for name in objects:
        out = subprocess.run([tool, str(root / "out" / name)], capture_output=True, text=True, timeout=30)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (name, errors)


def test_placeholders_and_stable_uids(tmp_path):
    make_case(tmp_path / "case")
    for out in ("a", "b"):
        assert main(["dicom", str(tmp_path / "case"), "--out", str(tmp_path / out)]) == 0
    a = pydicom.dcmread(tmp_path / "a" / "raw_event01_wli.dcm")
    b = pydicom.dcmread(tmp_path / "b" / "raw_event01_wli.dcm")
    assert a.PatientIdentityRemoved == "YES" and "DEIDENTIFIED" in str(a.PatientName)
    assert a.PatientID.startswith("ENDOFUSE-DEID-") and a.SOPInstanceUID == b.SOPInstanceUID
    assert pydicom.uid.UID(a.StudyInstanceUID).is_valid


def test_dcmdump_reads_every_object(exported):
    root, _, objects = exported
    tool = shutil.which("dcmdump")
    if tool is None:
        pytest.skip("dcmdump (Debian package dcmtk) is not installed")
    for name in objects:
        out = subprocess.run([tool, str(root / "out" / name)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0 and "E: " not in out.stderr, (name, out.stderr)
        if name == "video.dcm":  # the offset table and the stream: one fragment
            assert "PixelSequence #=2" in out.stdout and "MPEG-4 AVC/H.264 High Profile / Level 4.1" in out.stdout


@pytest.mark.parametrize("argv, message", [
    (["--study-json", "{json}"], "unknown key 'patient_nmae'"),
    (["--study-uid", "1.2.abc"], "--study-uid '1.2.abc' is not a valid DICOM UID"),
    (["--patient-birth-date", "1970-01-01"], "--patient-birth-date '1970-01-01' must be YYYYMMDD"),
    (["--send", "pacs"], "--send must be HOST:PORT"),
])
def test_bad_options_are_one_line(exported, tmp_path, capsys, argv, message):
    study_json = tmp_path / "study.json"
    study_json.write_text(json.dumps({"patient_nmae": "x"}))
    argv = [a.replace("{json}", str(study_json)) for a in argv]
    assert main(["dicom", str(exported[0] / "case"), "--out", str(tmp_path / "out"), *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
