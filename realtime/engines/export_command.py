"""`endofuse export`: a checkpoint -> ONNX, INT8 ONNX, OpenVINO IR, TensorRT plans, or a Triton model repository."""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from endofuse.errors import EndofuseError
from endofuse.outputs import OutputFolder, check_output_file, refuse_overlap

FORMATS = ("onnx", "tensorrt", "triton-repo", "onnx-int8", "openvino", "openvino-int8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="endofuse checkpoint (.pt); default: the bundled tiny demo weights")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--out", required=True, type=Path,
                        help="output file (.onnx / .xml / .plan) or, for triton-repo, the repository folder; the "
                             "missing-NBI variant is written beside it as NAME.missing-nbi.onnx / .xml / .plan")
    parser.add_argument("--fp16", action="store_true", help="FP16 TensorRT plans (tensorrt, triton-repo)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="dynamic batch dimension (always on for triton-repo)")
    group = parser.add_argument_group("openvino")
    group.add_argument("--precision", default="auto", choices=("auto", "f32", "bf16", "int8"),
                       help="OpenVINO IR precision: auto/f32/bf16 keep f32 weights and set the inference precision "
                            "an engine uses by default (auto: OpenVINO's choice for the CPU); int8 quantises with "
                            "NNCF (same as --format openvino-int8)")
    group = parser.add_argument_group("onnx-int8 / openvino-int8")
    group.add_argument("--calibration", type=Path, default=None,
                       help="dataset folder (reference CSV format) whose frames calibrate INT8; "
                            "default: synthetic pairs")
    group.add_argument("--calibration-pairs", type=int, default=32, help="how many pairs calibrate INT8")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads torch uses for the export, from 1 to the CPUs this process may use "
                             "(default: torch's choice)")
    group = parser.add_argument_group("triton-repo / tensorrt")
    group.add_argument("--max-batch-size", type=int, default=8, help="largest batch served / in the TRT profile")
    group.add_argument("--queue-delay-us", type=int, default=500, help="Triton dynamic batching max queue delay")
    group.add_argument("--name", default="endofuse", help="Triton model name")
    group.add_argument("--force", action="store_true",
                       help="write the repository into a folder that holds files endofuse did not write")


def main(args: argparse.Namespace) -> int:
    from endofuse.realtime.engines.cache import file_sha256
    from endofuse.realtime.engines.factory import load_model_and_label, tensorrt_available
    from endofuse.realtime.engines.onnx_export import export_onnx

    if args.fp16 and args.format in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
        raise EndofuseError("--fp16 applies to TensorRT plans (--format tensorrt or triton-repo); on the CPU, ONNX "
                            "Runtime runs fp32 or INT8 and OpenVINO f32, bf16 or INT8 (--precision)")
    if args.precision != "auto" and args.format not in ("openvino", "openvino-int8"):
        raise EndofuseError(f"--precision applies to OpenVINO IR (--format openvino), not --format {args.format}")
    if args.format == "openvino-int8" and args.precision not in ("auto", "int8"):
        raise EndofuseError(f"--format openvino-int8 writes INT8 IR; drop --precision {args.precision} or use "
                            f"--format openvino")
    if args.max_batch_size < 1:
        raise EndofuseError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    if args.format == "tensorrt" and not tensorrt_available():
        raise EndofuseError("--format tensorrt needs the tensorrt package and a CUDA GPU on this machine (TensorRT "
                            "plans are built for the GPU that will run them); use --format onnx here")
    source = Path(args.checkpoint) if args.checkpoint else None
    if source is None:
        from endofuse.model import demo_checkpoint_path
        source = demo_checkpoint_path()
    repo = check_export_outputs(args, source)
    if args.calibration is not None:  # before the export, which takes tens of seconds
        from endofuse.realtime.engines.calibration import check_calibration_folder

        check_calibration_folder(args.calibration)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    from endofuse.realtime.engines.classifier_export import export_command, is_classifier_checkpoint

    if is_classifier_checkpoint(source):
        return export_command(source, args.format, args.out)
    model, label = load_model_and_label(source)
    digest = file_sha256(source)
    dynamic = args.dynamic_batch or args.format == "triton-repo"
    out: Path = args.out

    if args.format == "onnx":
        result = export_onnx(model, out, model_label=label, source_sha256=digest, dynamic_batch=dynamic)
        print(f"wrote {result.path} and {result.missing_nbi_path}")
        return 0
    with tempfile.TemporaryDirectory(prefix="endofuse-export-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "model.onnx", model_label=label, source_sha256=digest,
                           dynamic_batch=dynamic).path
        if args.format == "onnx-int8":
            _write_int8(fp32, out, model.img_size, args.calibration, args.calibration_pairs)
        elif args.format.startswith("openvino"):
            precision = "int8" if args.format == "openvino-int8" else args.precision
            _write_openvino(fp32, out, model.img_size, precision, args.calibration, args.calibration_pairs)
        elif args.format == "tensorrt":
            from endofuse.realtime.engines.tensorrt_engine import build_plans
            build_plans(fp32, out, fp16=args.fp16, max_batch=args.max_batch_size)
        else:
            try:
                _write_triton(fp32, out, args, tensorrt_available())
            finally:
                repo.commit()
    return 0


def check_export_outputs(args: argparse.Namespace, source: Path) -> OutputFolder | None:
    """Refuse, before exporting, an output that is the checkpoint or calibration data, or a foreign folder.

    Returns the prepared repository folder for triton-repo (files it holds are endofuse's).
    """
    from endofuse.realtime.engines.onnx_export import missing_nbi_path_for

    out = Path(args.out)
    inputs = {"--checkpoint": source, "--calibration": args.calibration}
    if args.format == "triton-repo":
        refuse_overlap({"--out": out}, inputs, output_dirs=["--out"])
        return OutputFolder(out, "export --out", force=args.force).prepare()
    if out.is_dir():
        raise EndofuseError(f"--out '{out}' is a folder: give a file name (e.g. {out / 'model.onnx'})")
    outputs = {"--out": out, "the missing-NBI variant": missing_nbi_path_for(out)}
    if out.suffix == ".xml":
        outputs["the IR weights"] = out.with_suffix(".bin")
    refuse_overlap(outputs, inputs)
    check_output_file(out, "--out")
    return None


def _write_int8(fp32: Path, out: Path, size: int, data_dir: Path | None, count: int) -> None:
    from endofuse.realtime.engines.calibration import calibration_pairs, preprocess_pair
    from endofuse.realtime.engines.quantize import quantize_int8

    pairs = [preprocess_pair(p, (size, size)) for p in calibration_pairs(data_dir, count)]
    quantize_int8(fp32, out, pairs)
    print(f"wrote {out} and its missing-NBI variant (calibrated on {len(pairs)} "
          f"{'pairs from ' + str(data_dir) if data_dir else 'synthetic pairs'})")


def _write_openvino(fp32: Path, out: Path, size: int, precision: str, data_dir: Path | None, count: int) -> None:
    from endofuse.realtime.engines.openvino_export import calibration_batches, onnx_to_ir

    batches = calibration_batches(data_dir, count, (size, size)) if precision == "int8" else None
    onnx_to_ir(fp32, out, precision, batches)
    note = ""
    if batches:
        note = f" (calibrated on {len(batches)} {'pairs from ' + str(data_dir) if data_dir else 'synthetic pairs'})"
    print(f"wrote {out} + .bin and its missing-NBI variant{note}")


def _write_triton(fp32: Path, out: Path, args: argparse.Namespace, with_plans: bool) -> None:
    from endofuse.realtime.engines.tritonserver_repo import TritonSettings, write_triton_repository

    plans = None
    if with_plans:
        from endofuse.realtime.engines.onnx_export import MISSING_NBI, missing_nbi_path_for
        from endofuse.realtime.engines.tensorrt_engine import build_plans
        plan = build_plans(fp32, fp32.with_suffix(".plan"), fp16=args.fp16, max_batch=args.max_batch_size)
        plans = {"fused": plan, MISSING_NBI: missing_nbi_path_for(plan)}
    preferred = tuple(b for b in (args.max_batch_size // 2, args.max_batch_size) if b >= 1)
    settings = TritonSettings(max_batch_size=args.max_batch_size, max_queue_delay_us=args.queue_delay_us,
                              preferred_batch_sizes=tuple(sorted(set(preferred))), fp16=args.fp16)
    configs = write_triton_repository(out, fp32, settings=settings, plans=plans, name=args.name)
    print(f"wrote Triton model repository {out}: " + ", ".join(c.parent.name for c in configs)
          + ("" if with_plans else " (ONNX models; no TensorRT on this machine, so no .plan models)"))
