"""The Triton kernels themselves (interpreter on CPU, native on CUDA) against plain-torch references.

CPU cases run the real kernels through TRITON_INTERPRET=1 (set by conftest before
import). On a GPU machine run with TRITON_INTERPRET=0 to test the compiled kernels
on `cuda` tensors; the `cpu` cases then skip.
"""

import pytest
import torch
import torch.nn.functional as F

from endofuse.kernels import attention, dacl_loss, mmd_loss
from endofuse.kernels._backend import HAS_TRITON, interpreter_enabled
from endofuse.model import losses

pytestmark = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# (forward atol, grad rtol-of-max) per input dtype; fp16 stores outputs/grads in fp16.
TOLERANCES = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 4e-3), torch.bfloat16: (2e-2, 3e-2)}


@pytest.fixture(autouse=True)
def fixed_tiles(monkeypatch):
    """One tile config per kernel: GPU autotune would compile every candidate for every shape."""
    monkeypatch.setenv("ENDOFUSE_AUTOTUNE", "0")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    if request.param == "cpu" and not interpreter_enabled():
        pytest.skip("CPU tensors need TRITON_INTERPRET=1 (set by conftest unless overridden)")
    return request.param


def _dtypes(device: str) -> list:
    # bf16 arithmetic is wrong under the interpreter: GPU only.
    return [torch.float32, torch.float16] + ([torch.bfloat16] if device == "cuda" else [])


def run_with_grads(fn, inputs, grad_out=None):
    """Output and input gradients of fn(*inputs) on fresh leaf copies."""
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(grad_out if grad_out is not None else torch.ones_like(out))
    return out.detach(), [leaf.grad for leaf in leaves]


def assert_grads_close(actual, expected, rel, atol):
    """Max error within rel * max|reference| + atol (atol covers gradients that are exactly 0, e.g. dq at N=1)."""
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        scale = e.abs().max().item()
        err = (a.double() - e.double()).abs().max().item()
        assert err <= rel * scale + atol, \
            f"grad of input {i}: max abs error {err:.3g} > {rel:g} * max|ref| {scale:.3g} + {atol:g}"


@pytest.mark.parametrize("batch, heads, n_ctx, head_dim", [(1, 2, 1, 32), (2, 2, 17, 32), (1, 2, 197, 32),
                                                        (24, 1, 17, 32), (1, 1, 33, 64), (1, 1, 17, 128)])
def test_attention_forward_and_grads_match_sdpa(device, batch, heads, n_ctx, head_dim):
    for dtype in _dtypes(device):
        torch.manual_seed(n_ctx)
        q, k, v = (torch.randn(batch, heads, n_ctx, head_dim, device=device).to(dtype) for _ in range(3))
        grad_out = torch.randn(batch, heads, n_ctx, head_dim, device=device).to(dtype)
        out, grads = run_with_grads(lambda a, b, c: attention(a, b, c, backend="triton"), (q, k, v), grad_out)
        ref, ref_grads = run_with_grads(
            lambda a, b, c: F.scaled_dot_product_attention(a, b, c), [t.double() for t in (q, k, v)], grad_out.double()
        )
        atol, rel = TOLERANCES[dtype]
        assert out.dtype == dtype and out.shape == q.shape
        torch.testing.assert_close(out.double(), ref, atol=atol, rtol=atol,
                                   msg=lambda m, dtype=dtype, n_ctx=n_ctx: f"{dtype} N={n_ctx}: {m}")
        assert_grads_close(grads, ref_grads, rel, atol)


@pytest.mark.skipif(not interpreter_enabled(), reason="checks the interpreter-only refusal")
def test_attention_rejects_bf16_under_interpreter():
    q = torch.zeros(1, 1, 4, 32, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 runs on GPU only"):
        attention(q, q, q, backend="triton")


def test_attention_auto_on_cpu_never_calls_the_kernel(monkeypatch):
    import endofuse.kernels.flash_attention as module

    def fail(*_args):
        raise AssertionError("auto on CPU must not launch the Triton kernel")

    monkeypatch.setattr(module, "flash_attention_forward", fail)
    q = torch.randn(1, 2, 5, 32)
    torch.testing.assert_close(attention(q, q, q), F.scaled_dot_product_attention(q, q, q))


@pytest.mark.parametrize("batch", [1, 2, 24])
def test_dacl_forward_and_grads_match_reference(device, batch):
    for dtype in _dtypes(device):
        torch.manual_seed(batch)
        # (B, 3, 50) -> D = 150: not a multiple of the 64-wide D tiles, on purpose
        feats = [torch.randn(batch, 3, 50, device=device).to(dtype) for _ in range(4)]
        out, grads = run_with_grads(lambda *t: dacl_loss(*t, temperature=0.1, backend="triton"), feats)
        ref, ref_grads = run_with_grads(lambda *t: losses.dacl(*t, temperature=0.1), [f.double() for f in feats])
        atol, rel = TOLERANCES[dtype]
        torch.testing.assert_close(out.double(), ref, atol=10 * atol, rtol=atol)
        assert_grads_close(grads, ref_grads, rel, atol)


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian"])
@pytest.mark.parametrize("batch", [1, 2, 24])
def test_mmd_forward_and_grads_match_reference(device, batch, kernel):
    for dtype in _dtypes(device):
        torch.manual_seed(batch)
        x = torch.randn(batch, 70, device=device).to(dtype)
        y = (torch.randn(batch, 70, device=device) + 0.3).to(dtype)
        out, grads = run_with_grads(lambda a, b: mmd_loss(a, b, kernel=kernel, backend="triton"), (x, y))
        ref, ref_grads = run_with_grads(lambda a, b: losses.mmd(a, b, kernel=kernel), (x.double(), y.double()))
        atol, rel = TOLERANCES[dtype]
        torch.testing.assert_close(out.double(), ref, atol=10 * atol, rtol=atol)
        assert_grads_close(grads, ref_grads, rel, atol)


class TinyLossBlock(torch.nn.Module):
    """Attention on token maps followed by both fused losses: one graph through every custom op."""

    def forward(self, q, k, v, x, y):
        tokens = attention(q, k, v, backend="triton")
        halves = tokens.flatten(2).chunk(4, dim=0)
        return tokens.sum() + dacl_loss(*halves, backend="triton") + mmd_loss(x, y, backend="triton")


def _tiny_inputs(device):
    torch.manual_seed(0)
    qkv = [torch.randn(4, 1, 17, 32, device=device) for _ in range(3)]
    return (*qkv, torch.randn(2, 40, device=device), torch.randn(2, 40, device=device))


def test_export_keeps_custom_ops_and_matches_eager(device):
    inputs = _tiny_inputs(device)
    exported = torch.export.export(TinyLossBlock(), inputs)
    graph = str(exported.graph_module.code)
    for op in ("endofuse.flash_attention", "endofuse.dacl_fused", "endofuse.pairwise_distance", "endofuse.mmd_reduce"):
        assert op in graph, f"{op} missing from the exported graph"
    torch.testing.assert_close(exported.module()(*inputs), TinyLossBlock()(*inputs))


@pytest.mark.slow  # inductor compiles C++: tens of seconds
def test_compile_forward_and_backward_match_eager(device):
    inputs = _tiny_inputs(device)
    compiled = torch.compile(TinyLossBlock(), fullgraph=True)
    out, grads = run_with_grads(compiled, inputs)
    ref, ref_grads = run_with_grads(TinyLossBlock(), inputs)
    torch.testing.assert_close(out, ref)
    for a, e in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, e)


def test_attention_without_grad_skips_the_custom_op_and_matches(device, monkeypatch):
    import endofuse.kernels.flash_attention as module

    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 2, 19, 32, device=device) for _ in range(3))
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())

    def fail(*_args):
        raise AssertionError("an eager no-grad call should launch the kernel directly")

    monkeypatch.setattr(module, "flash_attention_forward", fail)
    with torch.no_grad():
        out = attention(q, k, v, backend="triton")
    torch.testing.assert_close(out.double(), expected, atol=2e-5, rtol=2e-5)
