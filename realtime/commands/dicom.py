"""`endofuse dicom`: a case folder of `run --case` as DICOM objects, optionally stored into a PACS.

    endofuse dicom case/ --out dicom/                                   # de-identified placeholders
    endofuse dicom case/ --out dicom/ --patient-id 12345 --accession-number A77 --study-uid 1.2.3...
    endofuse dicom case/ --out dicom/ --study-json study.json --send pacs.hospital:104 --aet ENDOFUSE --called-aet PACS

The objects are written into --out first (nothing is lost when the PACS is down); `--send` then checks the PACS
with C-ECHO, skips the objects it already holds and stores the rest with C-STORE (docs/case.md).
"""
from __future__ import annotations

import argparse
import sys

from endofuse.errors import EndofuseError
from endofuse.outputs import OutputFolder, refuse_overlap

STUDY_OPTIONS = ("patient_name", "patient_id", "patient_birth_date", "patient_sex", "study_uid", "accession_number",
                 "study_id", "study_description", "referring_physician", "institution_name", "anatomic_region")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from endofuse.realtime.record.dicom import ANATOMIC_REGIONS

    parser.add_argument("case", metavar="CASE_DIR", help="a case folder written by `endofuse run --case`")
    parser.add_argument("--out", required=True, metavar="DIR", help="write the DICOM files here (kept after a send)")
    parser.add_argument("--force", action="store_true", help="allow --out to hold files endofuse did not write")
    study = parser.add_argument_group("patient and study (without them: de-identified placeholders, fresh UIDs)")
    for name in STUDY_OPTIONS[:-1]:
        study.add_argument(f"--{name.replace('_', '-')}", default=None)
    study.add_argument("--anatomic-region", default=None, choices=tuple(ANATOMIC_REGIONS),
                       help="the examined region, coded in every object (default larynx)")
    study.add_argument("--study-json", default=None, metavar="FILE",
                       help=f"the same fields as a JSON object (keys {', '.join(STUDY_OPTIONS)}); options win")
    send = parser.add_argument_group("store into a PACS")
    send.add_argument("--send", default=None, metavar="HOST:PORT", help="C-STORE the objects to this DICOM node")
    send.add_argument("--aet", default="ENDOFUSE", help="our AE title (default ENDOFUSE)")
    send.add_argument("--called-aet", default="ANY-SCP", help="the PACS's AE title (default ANY-SCP)")
    send.add_argument("--timeout", type=float, default=10.0, help="network timeout in seconds (default 10)")


def check_dicom_extra() -> None:
    """One line instead of an ImportError when the [dicom] extra is missing."""
    import importlib.util

    missing = [m for m in ("pydicom", "highdicom", "pynetdicom", "av") if importlib.util.find_spec(m) is None]
    if missing:
        raise EndofuseError(f"endofuse dicom needs {', '.join(missing)}: pip install 'endofuse[dicom]'")


def main(args: argparse.Namespace) -> int:
    check_dicom_extra()
    from endofuse.realtime.record.case import load_case
    from endofuse.realtime.record.dicom import StudyInfo, write_case_dicom
    from endofuse.realtime.record.pacs import parse_node, send_files

    load_case(args.case)  # a wrong folder fails before anything is written
    study = StudyInfo.from_options({name: getattr(args, name) for name in STUDY_OPTIONS}, args.study_json)
    node = parse_node(args.send) if args.send else None
    refuse_overlap({"--out": args.out}, {"CASE_DIR": args.case, "--study-json": args.study_json},
                   output_dirs=["--out"], input_dirs=["CASE_DIR"])
    folder = OutputFolder(args.out, "--out", force=args.force).prepare()
    try:
        paths = write_case_dicom(args.case, args.out, study)
    finally:
        folder.commit()
    print(f"endofuse dicom: {len(paths)} objects -> {args.out}")
    if node is None:
        return 0
    sent, skipped = send_files(paths, node, args.aet, args.called_aet, args.timeout)
    print(f"endofuse dicom: stored {sent}, already in the PACS {skipped} -> {args.called_aet}@{args.send}",
          file=sys.stdout)
    return 0
