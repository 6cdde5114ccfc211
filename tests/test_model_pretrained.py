"""ImageNet-21k npz loader: a small npz in the Google ViT / TransUNet key format, written here."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from endofuse.model import build_model
from endofuse.model.pretrained import load_imagenet21k_npz, resize_position_embedding

CFG = dict(depth=2, shallow_taps=(1, 2), stem_units=(1, 2, 1))  # tiny numbers, two units in stage 2
DIM, HEADS, MLP, WIDTH = 128, 4, 256, 16


def write_npz(path, grid: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the Flax layout: HWIO convs, (in, out) dense, (dim, heads, head_dim) q/k/v."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    arrays = {
        "cls": r(1, 1, DIM),
        "embedding/kernel": r(1, 1, WIDTH * 16, DIM),
        "embedding/bias": r(DIM),
        "Transformer/posembed_input/pos_embedding": r(1, 1 + grid * grid, DIM),
        "Transformer/encoder_norm/scale": 1 + r(DIM),
        "Transformer/encoder_norm/bias": r(DIM),
        "conv_root/kernel": r(7, 7, 3, WIDTH),
        "gn_root/scale": 1 + r(WIDTH),
        "gn_root/bias": r(WIDTH),
        "head/kernel": r(DIM, 21843),  # classifier of the 21k model: ignored
        "head/bias": r(21843),
    }
    in_ch = WIDTH
    for b, units in enumerate(CFG["stem_units"], start=1):
        out_ch, mid = WIDTH * 4 * 2 ** (b - 1), WIDTH * 2 ** (b - 1)
        for u in range(1, units + 1):
            p = f"block{b}/unit{u}/"
            cin = in_ch if u == 1 else out_ch
            arrays |= {p + "conv1/kernel": r(1, 1, cin, mid), p + "conv2/kernel": r(3, 3, mid, mid),
                       p + "conv3/kernel": r(1, 1, mid, out_ch)}
            for gn, ch in (("gn1", mid), ("gn2", mid), ("gn3", out_ch)):
                arrays |= {p + f"{gn}/scale": 1 + r(ch), p + f"{gn}/bias": r(ch)}
            if u == 1:
                arrays |= {p + "conv_proj/kernel": r(1, 1, cin, out_ch), p + "gn_proj/scale": 1 + r(out_ch),
                           p + "gn_proj/bias": r(out_ch)}
        in_ch = out_ch
    for i in range(CFG["depth"]):
        p = f"Transformer/encoderblock_{i}/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            arrays |= {p + f"{ln}/scale": 1 + r(DIM), p + f"{ln}/bias": r(DIM)}
        arrays |= {
            p + "MlpBlock_3/Dense_0/kernel": r(DIM, MLP), p + "MlpBlock_3/Dense_0/bias": r(MLP),
            p + "MlpBlock_3/Dense_1/kernel": r(MLP, DIM), p + "MlpBlock_3/Dense_1/bias": r(DIM),
        }  # fmt: skip
        a = p + "MultiHeadDotProductAttention_1/"
        for name in ("query", "key", "value"):
            arrays |= {a + f"{name}/kernel": r(DIM, HEADS, DIM // HEADS), a + f"{name}/bias": r(HEADS, DIM // HEADS)}
        arrays |= {a + "out/kernel": r(HEADS, DIM // HEADS, DIM), a + "out/bias": r(DIM)}
    np.savez(path, **arrays)
    return arrays


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("tiny", **CFG).eval()


def flax_attention(x: np.ndarray, arrays: dict, block: int) -> np.ndarray:
    """Flax MultiHeadDotProductAttention semantics on (N, D) tokens, written with einsum."""
    a = f"Transformer/encoderblock_{block}/MultiHeadDotProductAttention_1/"
    q, k, v = (np.einsum("nd,dhk->nhk", x, arrays[a + f"{n}/kernel"]) + arrays[a + f"{n}/bias"]
               for n in ("query", "key", "value"))
    logits = np.einsum("qhk,nhk->hqn", q, k) / np.sqrt(q.shape[-1])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.einsum("hqn,nhk->qhk", probs, v)
    return np.einsum("qhk,hkd->qd", context, arrays[a + "out/kernel"]) + arrays[a + "out/bias"]


def test_loads_both_encoders_with_flax_semantics(model, tmp_path):
    arrays = write_npz(tmp_path / "R50+ViT-B_16.npz", grid=10)
    decoder_before = model.decoder.head.weight.clone()
    count = load_imagenet21k_npz(model, tmp_path / "R50+ViT-B_16.npz")
    assert count == len(model.encoder_wli.state_dict())
    for enc in (model.encoder_wli, model.encoder_nbi):
        x = np.random.default_rng(1).standard_normal((100, DIM)).astype(np.float32)
        with torch.no_grad():
            ours = enc.blocks[1].attn(torch.from_numpy(x)[None])[0].numpy()
        np.testing.assert_allclose(ours, flax_attention(x, arrays, 1), atol=1e-4, rtol=1e-4)
        # MLP: Dense (in, out) kernels
        h = np.random.default_rng(2).standard_normal((5, DIM)).astype(np.float32)
        p = "Transformer/encoderblock_0/MlpBlock_3/"
        pre = h @ arrays[p + "Dense_0/kernel"] + arrays[p + "Dense_0/bias"]
        with torch.no_grad():
            got = enc.blocks[0].mlp.fc1(torch.from_numpy(h)).numpy()
        np.testing.assert_allclose(got, pre, atol=1e-5, rtol=1e-5)
        # the position embedding of the same grid is copied, class token dropped
        np.testing.assert_array_equal(enc.pos_embed.detach().numpy(),
                                      arrays["Transformer/posembed_input/pos_embedding"][:, 1:])
    torch.testing.assert_close(model.decoder.head.weight, decoder_before)  # untouched


def test_root_conv_kernel_is_hwio_at_one_output_pixel(model, tmp_path):
    arrays = write_npz(tmp_path / "w.npz", grid=10)
    load_imagenet21k_npz(model, tmp_path / "w.npz")
    image = torch.rand(1, 3, 32, 32)
    kernel = arrays["conv_root/kernel"]  # (7, 7, in, out); standardise like the model does
    kernel = (kernel - kernel.mean((0, 1, 2))) / np.sqrt(kernel.var((0, 1, 2)) + 1e-5)
    padded = F.pad(image, (3, 3, 3, 3))[0].numpy()  # (C, H, W)
    i, j = 5, 9  # output pixel, stride 2
    patch = padded[:, 2 * i : 2 * i + 7, 2 * j : 2 * j + 7]  # (C, 7, 7)
    expected = np.einsum("chw,hwco->o", patch, kernel)
    with torch.no_grad():
        got = model.encoder_wli.stem.root_conv(image)[0, :, i, j].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_position_grid_is_resized_with_corners_kept(model, tmp_path):
    arrays = write_npz(tmp_path / "w.npz", grid=7)  # 7x7 -> 10x10
    load_imagenet21k_npz(model, tmp_path / "w.npz")
    src = arrays["Transformer/posembed_input/pos_embedding"][0, 1:].reshape(7, 7, DIM)
    got = model.encoder_nbi.pos_embed.detach()[0].reshape(10, 10, DIM).numpy()
    for (si, sj), (gi, gj) in (((0, 0), (0, 0)), ((0, 6), (0, 9)), ((6, 0), (9, 0)), ((6, 6), (9, 9))):
        np.testing.assert_allclose(got[gi, gj], src[si, sj], atol=1e-6)
    # a middle point: linear interpolation between the two nearest source rows/cols
    ratio = 6 / 9 * 3  # dst index 3 -> src position 2.0
    np.testing.assert_allclose(got[3, 0], src[int(ratio), 0], atol=1e-5)
    with pytest.raises(ValueError, match="cannot be resized"):
        resize_position_embedding(np.zeros((1, 1 + 12, DIM), np.float32), 100)


def test_mismatched_npz_names_the_key(model, tmp_path):
    arrays = write_npz(tmp_path / "w.npz", grid=10)
    small = build_model("tiny", depth=2, shallow_taps=(1, 2), hidden_size=64, heads=4, mlp_dim=128)
    expected = r"w\.npz: pos_embed has shape \(1, 100, 128\), model 'tiny' expects \(1, 100, 64\)"
    with pytest.raises(ValueError, match=expected):
        load_imagenet21k_npz(small, tmp_path / "w.npz")
    del arrays["Transformer/encoderblock_1/LayerNorm_2/scale"]
    np.savez(tmp_path / "cut.npz", **arrays)
    with pytest.raises(ValueError, match="cut.npz: missing key 'Transformer/encoderblock_1/LayerNorm_2/scale'"):
        load_imagenet21k_npz(model, tmp_path / "cut.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_imagenet21k_npz(model, tmp_path / "nope.npz")
