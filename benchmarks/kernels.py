"""Kernels: fused ops vs unfused PyTorch references, time and memory per shape.

    python benchmarks/kernels.py              # every op, shapes for the device present
    python benchmarks/kernels.py --ops attention dacl --repeats 50 --json benchmarks/results/kernels-cpu.json

On a CUDA device the fused column is the Triton kernels; on CPU it is the
package's own torch/OpenCV fallbacks (Triton timings need a GPU; the Triton
interpreter is a correctness tool, not a speed one). Memory columns: the bytes
autograd saves for the backward (any device) and, on CUDA, the peak allocated
during forward+backward above what was allocated before. Ratios are measured
in the same run: reference time / fused time.
"""
from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from endofuse.kernels import attention, dacl_loss, mmd_loss, overlay, preprocess
from endofuse.kernels.dacl import loss_from_gram
from endofuse.kernels.mmd import mmd_from_distances
from endofuse.machine import time_calls

from _common import add_json_argument, record, report, table

OPS = ("attention", "dacl", "mmd", "preprocess", "overlay")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 3) -> float:
    return statistics.median(time_calls(fn, repeats, warmup, sync=lambda: synchronize(device)))


def graph_ms(fn: Callable[[], object], device: torch.device) -> float | None:
    """GPU time of fn replayed from a CUDA graph (no Python/launch overhead); None off CUDA or if capture fails."""
    if device.type != "cuda":
        return None
    try:
        from triton.testing import do_bench_cudagraph

        with torch.no_grad():
            return float(do_bench_cudagraph(fn, rep=50))
    except Exception as exc:  # some ops cannot be captured; say so instead of failing the whole bench
        print(f"# CUDA-graph timing skipped: {type(exc).__name__}: {str(exc)[:120]}")
        return None


def saved_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of distinct storages autograd saves for the backward of fn()."""
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@dataclass
class Row:
    op: str
    shape: str
    pass_: str
    fused_ms: float
    reference_ms: float
    fused_mem: str = ""
    reference_mem: str = ""
    extra: str = ""

    def cells(self) -> list:
        ratio = self.reference_ms / self.fused_ms if self.fused_ms > 0 else float("nan")
        return [self.op, self.shape, self.pass_, self.fused_ms, self.reference_ms, ratio,
                self.fused_mem or "-", self.reference_mem or "-", self.extra]


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def rate(flops: float, ms: float) -> str:
    tflops = flops / ms / 1e9
    return f"{tflops:.1f} TFLOPS" if tflops >= 1 else f"{tflops * 1e3:.1f} GFLOPS"


def train_step(loss_fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor]) -> Callable[[], None]:
    """forward + backward of loss_fn on leaf copies of inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]

    def step():
        for leaf in leaves:
            leaf.grad = None
        out = loss_fn(*leaves)
        out.backward(torch.ones_like(out))

    return step


def compare(op: str, shape: str, fused: Callable, reference: Callable, inputs: list[torch.Tensor],
            device: torch.device, repeats: int, flops: float | None = None) -> list[Row]:
    """Forward-only and forward+backward rows for two differentiable implementations."""
    rows = []
    with torch.no_grad():
        f_ms = median_ms(lambda: fused(*inputs), device, repeats)
        r_ms = median_ms(lambda: reference(*inputs), device, repeats)
    extra = f"{rate(flops, f_ms)} fused, {rate(flops, r_ms)} ref" if flops else ""
    rows.append(Row(op, shape, "fwd", f_ms, r_ms, extra=extra))
    f_graph, r_graph = graph_ms(lambda: fused(*inputs), device), graph_ms(lambda: reference(*inputs), device)
    if f_graph is not None and r_graph is not None:
        extra = f"{rate(flops, f_graph)} fused, {rate(flops, r_graph)} ref" if flops else ""
        rows.append(Row(op, shape, "fwd, CUDA graph", f_graph, r_graph, extra=extra))
    fused_step, ref_step = train_step(fused, inputs), train_step(reference, inputs)
    f_ms, r_ms = median_ms(fused_step, device, repeats), median_ms(ref_step, device, repeats)
    grad_inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    f_mem = f"saved {mib(saved_bytes(lambda: fused(*grad_inputs)))}, peak {mib(peak_bytes(fused_step, device))}"
    r_mem = f"saved {mib(saved_bytes(lambda: reference(*grad_inputs)))}, peak {mib(peak_bytes(ref_step, device))}"
    # backward = 2.5x the forward matmul work (FlashAttention convention), so fwd+bwd = 3.5x
    extra = f"{rate(3.5 * flops, f_ms)} fused, {rate(3.5 * flops, r_ms)} ref" if flops else ""
    rows.append(Row(op, shape, "fwd+bwd", f_ms, r_ms, f_mem, r_mem, extra))
    return rows


def naive_attention(q, k, v):
    """The materialised N x N softmax a plain PyTorch block computes."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def bench_attention(device, dtype, repeats, quick):
    if quick:
        shapes = [(2, 12, 196, 64), (1, 4, 300, 32)]
    elif dtype == torch.float16:
        shapes = [(24, 12, 197, 64), (8, 12, 1024, 64), (8, 8, 1024, 128)]
    else:  # fp32 (no tensor cores unless TF32 is allowed): the ViT shape only
        shapes = [(24, 12, 197, 64)]
    rows = []
    for b, h, n, d in shapes:
        inputs = [torch.randn(b, h, n, d, device=device, dtype=dtype) for _ in range(3)]
        reference = F.scaled_dot_product_attention if device.type == "cuda" else naive_attention
        ref_name = "SDPA" if device.type == "cuda" else "naive"
        rows += compare(f"attention vs {ref_name}", f"{b}x{h}x{n}x{d} {str(dtype)[6:]}", attention, reference,
                        inputs, device, repeats, flops=4.0 * b * h * n * n * d)
    return rows


def unfused_dacl(share_w, share_n, spec_w, spec_n, temperature=0.1):
    """Reference data flow: concatenated copy, normalised copy, Gram of the normalised rows."""
    z = F.normalize(torch.cat([t.flatten(1) for t in (share_w, share_n, spec_w, spec_n)]).float(), dim=1)
    return loss_from_gram(z @ z.t(), share_w.shape[0], temperature)


def bench_dacl(device, dtype, repeats, quick):
    shapes = [(4, 196 * 128)] if quick else [(24, 196 * 768)]
    rows = []
    for b, d in shapes:
        inputs = [torch.randn(b, d, device=device, dtype=dtype) for _ in range(4)]
        rows += compare("dacl", f"B={b} D={d} {str(dtype)[6:]}", dacl_loss, unfused_dacl, inputs, device, repeats)
    return rows


def unfused_mmd(x, y, kernel_mul=2.0, kernel_num=5):
    """Reference data flow: the (2B, 2B, D) difference tensor, then the kernel sums."""
    total = torch.cat([x, y]).float()
    diff = total.unsqueeze(0) - total.unsqueeze(1)
    return mmd_from_distances((diff * diff).sum(-1), x.shape[0], kernel_mul, kernel_num)


def bench_mmd(device, dtype, repeats, quick):
    rows = []
    for b, d in [(8, 2304)] if quick else [(24, 2304)]:
        inputs = [torch.randn(b, d, device=device, dtype=dtype), torch.randn(b, d, device=device, dtype=dtype) + 0.1]
        rows += compare("mmd gaussian", f"B={b} D={d} {str(dtype)[6:]}", mmd_loss, unfused_mmd, inputs, device, repeats)
    return rows


def sample_frames(device):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1078, 1727, 3), (805, 832, 3))]
    return [torch.from_numpy(f).to(device) for f in frames] if device.type == "cuda" else frames


def torch_preprocess(frames, size):
    """Per-frame torch ops: permute, float, interpolate, channel flip, scale."""
    out = []
    for frame in frames:
        chw = torch.as_tensor(frame).permute(2, 0, 1)[None].float()
        out.append(F.interpolate(chw, size=size, mode="bilinear", align_corners=False).flip(1) / 255.0)
    return torch.cat(out)


def bench_preprocess(device, repeats, quick):
    frames = sample_frames(device)
    f_ms = median_ms(lambda: preprocess(frames, (224, 224)), device, repeats)
    r_ms = median_ms(lambda: torch_preprocess(frames, (224, 224)), device, repeats)
    note = "uint8 frames already on the device" if device.type == "cuda" else ""
    return [Row("preprocess (2 frames)", "1078x1727 + 805x832 -> 224", "fwd", f_ms, r_ms, extra=note)]


def torch_overlay(frame, logits, alpha=0.45, color=(0, 0, 255)):
    """Unfused torch: upsample, argmax, erosion by max-pool, blend, contour."""
    frame = torch.as_tensor(frame)
    up = F.interpolate(logits[None].float(), size=frame.shape[:2], mode="bilinear", align_corners=False)[0]
    mask = (up.argmax(0) != 0).float()
    eroded = -F.max_pool2d(-mask[None, None], 5, stride=1, padding=2)[0, 0]
    rim = (mask > 0) & (eroded == 0)
    color_t = torch.tensor(color, dtype=torch.float32, device=frame.device)
    mixed = torch.floor(frame.float() * (1 - alpha) + color_t * alpha + 0.5).clamp(0, 255)
    image = torch.where(mask[..., None] > 0, mixed, frame.float())
    return torch.where(rim[..., None], color_t, image).to(torch.uint8), mask.to(torch.uint8)


def bench_overlay(device, repeats, quick):
    frame = sample_frames(device)[0]
    logits = torch.zeros(2, 224, 224, device=device)
    logits[1, 60:150, 50:140] = 1.0  # a tumour-sized blob (about 16 % of the frame)
    f_ms = median_ms(lambda: overlay(frame, logits), device, repeats)
    r_ms = median_ms(lambda: torch_overlay(frame, logits), device, repeats)
    return [Row("overlay", "224 logits -> 1078x1727", "fwd", f_ms, r_ms)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--full", action="store_true", help="paper-size shapes on CPU too (slow)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    quick = device.type == "cpu" and not args.full
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    fused_label = "Triton kernels" if device.type == "cuda" else "torch/OpenCV fallbacks (Triton timings need a GPU)"
    dtypes = [torch.float16, torch.float32] if device.type == "cuda" else [torch.float32]
    runners = {
        "attention": lambda: [r for dt in dtypes for r in bench_attention(device, dt, args.repeats, quick)],
        "dacl": lambda: [r for dt in dtypes for r in bench_dacl(device, dt, args.repeats, quick)],
        "mmd": lambda: bench_mmd(device, torch.float32, args.repeats, quick),
        "preprocess": lambda: bench_preprocess(device, args.repeats, quick),
        "overlay": lambda: bench_overlay(device, args.repeats, quick),
    }
    rows: list[Row] = []
    failed = {}
    for op in args.ops:
        try:
            rows += runners[op]()
        except Exception as exc:  # one broken op should not hide the others' numbers
            failed[op] = f"{type(exc).__name__}: {str(exc)[:300]}"
            print(f"# {op}: FAILED {failed[op]}")
    header = ["op", "shape", "pass", "fused ms", "reference ms", "ref/fused", "fused MiB", "reference MiB", "note"]
    tab = table(f"{name}, fused = {fused_label}", header, [row.cells() for row in rows],
                note="Memory: bytes autograd saves for the backward; peak allocated during fwd+bwd on CUDA only.")
    rec = record("kernels", "Fused kernels vs unfused PyTorch references", [tab], argv,
                 details={"device": name, "failed": failed})
    report(rec, args.json)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
