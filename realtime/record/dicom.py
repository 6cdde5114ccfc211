"""A case folder as DICOM objects (modality ES), for archiving in a PACS.

    objects = write_case_dicom("case/", "dicom/", StudyInfo.from_options({...}))   # [(path, Dataset), ...]

* series 1: one VL Endoscopic Image (1.2.840.10008.5.1.4.1.1.77.1.1) per key frame, the raw content-area crop;
* series 2: the same WLI key frames with the AI overlay burned in (DERIVED, referencing the raw image);
* series 3: a DICOM Segmentation (binary) of the AI mask of each WLI key frame, referencing its raw image, with
  the AI algorithm identification (endofuse, version, model); written with highdicom (one SEG per key frame:
  a SEG of images without a frame of reference, as endoscopic images are, holds a single frame);
* series 4: the overlaid video as Video Endoscopic Image Storage (1.2.840.10008.5.1.4.1.1.77.1.1.1), H.264 High
  Profile level 4.1 (transfer syntax 1.2.840.10008.1.2.4.102), the whole bit stream in one fragment, encoded
  with libx264 from PyAV's wheel (OpenCV's wheel has no H.264 encoder).

UIDs that are not given are made from the case record itself (a hash of case.json), so exporting the same case
twice gives the same objects and a re-send finds them in the PACS. Without patient data, the objects carry
clearly marked placeholders (PatientIdentityRemoved YES).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from endofuse import __version__
from endofuse.errors import InvalidInputError, InvalidOptionError, MissingFileError

VL_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
H264_HIGH_41 = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264 High Profile / Level 4.1
H264_MAX_SIZE = (1920, 1080)  # level 4.1 at up to 30 frames/s
UID_PATTERN = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")
PLACEHOLDER_NAME = "DEIDENTIFIED^ENDOFUSE"
# --anatomic-region: the examined region's SNOMED CT code (from pydicom's code dictionary, CID 4040)
ANATOMIC_REGIONS = {"larynx": "Larynx", "pharynx": "Pharynx", "hypopharynx": "Hypopharynx",
                    "oropharynx": "Oropharynx", "nasopharynx": "Nasopharynx"}
SERIES = {"raw": (1, "endofuse key frames"), "overlay": (2, "endofuse key frames, AI overlay"),
          "seg": (3, "endofuse AI segmentation"), "video": (4, "endofuse overlaid video")}


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes (`endofuse dicom --patient-id ...` or a JSON file with these keys)."""

    patient_name: str | None = None
    patient_id: str | None = None
    patient_birth_date: str | None = None  # YYYYMMDD
    patient_sex: str | None = None  # M, F or O
    study_uid: str | None = None
    accession_number: str | None = None
    study_id: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    institution_name: str | None = None
    anatomic_region: str = "larynx"  # a key of ANATOMIC_REGIONS

    @classmethod
    def from_options(cls, options: dict, json_path: str | os.PathLike | None = None) -> StudyInfo:
        """Options override the JSON file's keys; unknown keys in the file are refused (a typo loses no field)."""
        values: dict = {}
        if json_path is not None:
            try:
                values = json.loads(Path(json_path).read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise MissingFileError(f"--study-json '{json_path}' does not exist") from None
            except (OSError, ValueError) as exc:
                raise InvalidInputError(f"--study-json '{json_path}' is not a JSON object ({exc})") from None
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(values) - names) if isinstance(values, dict) else ["(not an object)"]
            if unknown:
                raise InvalidInputError(f"--study-json '{json_path}': unknown key {unknown[0]!r} (use "
                                        f"{', '.join(sorted(names))})")
        values |= {k: v for k, v in options.items() if v is not None}
        info = cls(**{k: None if v is None else str(v) for k, v in values.items()})
        info.check()
        return info

    def check(self) -> None:
        if self.study_uid is not None and not (len(self.study_uid) <= 64 and UID_PATTERN.fullmatch(self.study_uid)):
            raise InvalidOptionError(f"--study-uid {self.study_uid!r} is not a valid DICOM UID (digits and dots, "
                                     "at most 64 characters)")
        if self.patient_birth_date is not None:
            try:
                dt.datetime.strptime(self.patient_birth_date, "%Y%m%d")
            except ValueError:
                raise InvalidOptionError(f"--patient-birth-date {self.patient_birth_date!r} must be YYYYMMDD") from None
        if self.anatomic_region not in ANATOMIC_REGIONS:
            raise InvalidOptionError(f"--anatomic-region must be one of {', '.join(ANATOMIC_REGIONS)}, "
                                     f"got {self.anatomic_region!r}")
        if self.patient_sex not in (None, "M", "F", "O"):
            raise InvalidOptionError(f"--patient-sex must be M, F or O, got {self.patient_sex!r}")

    @property
    def deidentified(self) -> bool:
        return self.patient_id is None and self.patient_name is None


class CaseUids:
    """UIDs derived from the case record (same case -> same UIDs), unless given."""

    def __init__(self, case_json: bytes, study_uid: str | None) -> None:
        from pydicom.uid import generate_uid

        self._seed = hashlib.sha256(case_json).hexdigest()
        self._generate = generate_uid
        self.study = study_uid or self.uid("study")

    def uid(self, role: str) -> str:
        return self._generate(entropy_srcs=[self._seed, role])


def _case_time(record: dict) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(record["recorded_at"])
    except (KeyError, ValueError):
        return dt.datetime.now(dt.timezone.utc)


def _common(study: StudyInfo, uids: CaseUids, record: dict, sop_class: str, role: str, series: str,
            instance: int):
    """A dataset with the Patient, General Study, Series, Equipment and SOP Common modules filled in."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    when = _case_time(record)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uids.uid(role)
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    ds.PatientName = study.patient_name or PLACEHOLDER_NAME
    ds.PatientID = study.patient_id or f"ENDOFUSE-DEID-{uids.study[-8:]}"
    ds.PatientBirthDate = study.patient_birth_date or ""
    ds.PatientSex = study.patient_sex or ""
    if study.deidentified:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "endofuse: no patient data given; placeholder name and ID"
    ds.StudyInstanceUID = uids.study
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.ReferringPhysicianName = study.referring_physician or ""
    ds.StudyID = study.study_id or ""
    ds.AccessionNumber = study.accession_number or ""
    if study.study_description:
        ds.StudyDescription = study.study_description
    number, description = SERIES[series]
    ds.Modality = "ES"
    ds.SeriesInstanceUID = uids.uid(f"series-{series}")
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = number, description, instance
    ds.Manufacturer = ds.ManufacturerModelName = "endofuse"
    ds.SoftwareVersions = __version__
    if study.institution_name:
        ds.InstitutionName = study.institution_name
    ds.PatientOrientation = ""
    ds.AnatomicRegionSequence = [_anatomic_region(study)]
    ds.AcquisitionContextSequence = []
    ds.BurnedInAnnotation = "NO"  # content-area crops: the processor's on-screen text is not in the image
    return ds


def _anatomic_region(study: StudyInfo):
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    code = getattr(codes.SCT, ANATOMIC_REGIONS[study.anatomic_region])
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def _rgb_pixels(ds, bgr: np.ndarray) -> None:
    ds.Rows, ds.Columns = bgr.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(bgr[..., ::-1]).tobytes()


def _read_png(case: Path, name: str, flags=cv2.IMREAD_COLOR) -> np.ndarray:
    image = cv2.imread(str(case / name), flags)
    if image is None:
        raise InvalidInputError(f"'{case / name}' is missing or not an image: the case folder is incomplete "
                                "(record it again)")
    return image


def key_frame_image(case: Path, study: StudyInfo, uids: CaseUids, record: dict, event: dict, key: dict,
                    part: str, instance: int, source=None):
    """One VL Endoscopic Image of a key frame: `part` "raw" (ORIGINAL) or "overlay" (DERIVED from `source`)."""
    ds = _common(study, uids, record, VL_ENDOSCOPIC, f"{part}-{event['id']}-{key['kind']}", part, instance)
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if part == "raw" else ["DERIVED", "SECONDARY"]
    ds.ImageComments = (f"event {event['id']} {key['kind'].upper()} key frame, run frame {key['frame']} at "
                        f"{key['time_s']:.2f} s" + (", AI overlay burned in" if part == "overlay" else ""))
    if source is not None:
        from pydicom.dataset import Dataset

        ref = Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
        ds.SourceImageSequence = [ref]
        ds.DerivationDescription = f"AI segmentation overlay burned in (endofuse {__version__})"
    _rgb_pixels(ds, _read_png(case, key[part]))
    return ds


def segmentation(case: Path, record: dict, uids: CaseUids, source, key: dict, instance: int):
    """The SEG of one key frame's AI mask, referencing its raw image `source`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="endofuse", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"model": str(record.get("model", ""))[:64], "engine": str(record.get("engine", ""))[:64]})
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="tumour (AI)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
    mask = (_read_png(case, key["mask"], cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
    number, description = SERIES["seg"]
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=uids.uid("series-seg"),
        series_number=number, sop_instance_uid=uids.uid(f"seg-{source.SOPInstanceUID}"),
        instance_number=instance, manufacturer="endofuse", manufacturer_model_name="endofuse",
        software_versions=__version__, device_serial_number="n/a", series_description=description,
        omit_empty_frames=False, content_label="ENDOFUSE_AI")
    seg.PatientOrientation = ""  # type 2C for images without a frame of reference; highdicom leaves it out
    return seg


def encode_h264(video_path: Path, max_size: tuple[int, int] = H264_MAX_SIZE) -> tuple[bytes, int, tuple, float]:
    """(H.264 Annex B stream, frames, (rows, cols), fps) of a video, re-encoded with libx264 (High, level 4.1)."""
    import av

    capture = cv2.VideoCapture(str(video_path))
    if not capture.isOpened():
        raise InvalidInputError(f"'{video_path}' cannot be opened as a video: the case folder is incomplete")
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    buffer, frames, size = io.BytesIO(), 0, None
    try:
        with av.open(buffer, "w", format="h264") as container:
            stream = None
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                if stream is None:
                    h, w = frame.shape[:2]
                    scale = min(1.0, max_size[0] / w, max_size[1] / h)
                    size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)  # 4:2:0 needs even sides
                    stream = container.add_stream("libx264", rate=round(fps))
                    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
                    stream.options = {"profile": "high", "level": "4.1", "preset": "veryfast", "crf": "18"}
                if (frame.shape[1], frame.shape[0]) != size:
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                    container.mux(packet)
                frames += 1
            if stream is not None:
                for packet in stream.encode():
                    container.mux(packet)
    finally:
        capture.release()
    if frames == 0:
        raise InvalidInputError(f"'{video_path}' holds no frames: nothing to export as video")
    return buffer.getvalue(), frames, (size[1], size[0]), fps


def video_object(case: Path, study: StudyInfo, uids: CaseUids, record: dict):
    """The overlaid video as a Video Endoscopic Image, H.264 in one fragment."""
    from pydicom.encaps import encapsulate

    stream, frames, (rows, cols), fps = encode_h264(case / record["video"])
    ds = _common(study, uids, record, VIDEO_ENDOSCOPIC, "video", "video", 1)
    ds.file_meta.TransferSyntaxUID = H264_HIGH_41
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = "content-area crop of the run with the AI overlay"
    ds.NumberOfFrames, ds.FrameIncrementPointer = frames, 0x00181063
    ds.FrameTime, ds.CineRate = round(1000.0 / fps, 3), round(fps)
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_PARTIAL_420", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_14496_10"
    ds.PixelData = encapsulate([stream], fragments_per_frame=1, has_bot=False)  # the whole stream: one fragment
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def case_objects(case_dir: str | os.PathLike, study: StudyInfo) -> list[tuple[str, object]]:
    """[(file name, dataset)] of a case folder, in the order they should be stored."""
    from endofuse.realtime.record.case import CASE_JSON, load_case

    case = Path(case_dir)
    record = load_case(case)
    uids = CaseUids((case / CASE_JSON).read_bytes(), study.study_uid)
    objects, segs = [], []
    for event in record["events"]:
        for key in event["key_frames"]:
            stem = f"event{event['id']:02d}_{key['kind']}"
            instance = sum(name.startswith("raw_") for name, _ in objects) + 1
            raw = key_frame_image(case, study, uids, record, event, key, "raw", instance)
            objects.append((f"raw_{stem}.dcm", raw))
            if "overlay" in key:
                objects.append((f"overlay_{stem}.dcm",
                                key_frame_image(case, study, uids, record, event, key, "overlay", instance, raw)))
                segs.append((f"seg_{stem}.dcm", segmentation(case, record, uids, raw, key, len(segs) + 1)))
    objects += segs
    if record.get("video"):
        objects.append(("video.dcm", video_object(case, study, uids, record)))
    return objects


def write_case_dicom(case_dir: str | os.PathLike, out_dir: str | os.PathLike, study: StudyInfo) -> list[Path]:
    """Write every object of the case into `out_dir` (atomically, one file each); their paths."""
    from endofuse.outputs import atomic_file

    paths = []
    for name, ds in case_objects(case_dir, study):
        path = Path(out_dir) / name
        with atomic_file(path, "wb") as f:
            ds.save_as(f, enforce_file_format=True)
        paths.append(path)
    return paths
