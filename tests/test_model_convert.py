"""Reference-checkpoint conversion: logits parity with an independent functional reference forward.

`reference_forward` below is a straightforward plain-torch re-statement of the
reference network that reads the REFERENCE-keyed state dict directly (keys and
shapes from tests/data/mm-endocl-state-dict.txt, a listing of the reference
checkpoint; numerics from the MM-EndoCL method description). It shares no code
with endofuse.model. The paper model is built at most twice in this module
(parity + CLI).
"""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from endofuse import cli
from endofuse.model import build_model, read_checkpoint
from endofuse.model.convert import convert_foreign_state_dict, convert_reference_state_dict

LISTING = Path(__file__).resolve().parent / "data" / "mm-endocl-state-dict.txt"  # key, shape, dtype per line
TOL = 1e-4


def _read_listing() -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in LISTING.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        rows.append((key, tuple(int(s) for s in re.findall(r"\d+", shape)), dtype))
    return rows


def random_reference_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values with sane scales; norm affines and BN running stats randomised so parity can fail."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in _read_listing():
        if dtype == "int64":
            state[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) * 1.5 + 0.5
        elif key.endswith("running_mean") or key.endswith("bias"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        elif len(shape) == 1:  # GroupNorm / LayerNorm / BatchNorm scale
            state[key] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        elif key.endswith("position_embeddings"):
            state[key] = torch.randn(shape, generator=g) * 0.1
        else:
            fan_in = math.prod(shape[1:])
            # a larger head spreads the logits over several units, so small numeric slips show
            scale = 10.0 if key.startswith("segmentation_head") else 1.0
            state[key] = torch.randn(shape, generator=g) * scale / math.sqrt(fan_in)
    return state


# ---------------- independent functional reference forward ----------------
def _std_conv(x, w, stride=1, padding=0):
    var, mean = torch.var_mean(w, dim=[1, 2, 3], keepdim=True, unbiased=False)
    return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), None, stride, padding)


def _gn(x, sd, prefix, groups, eps):
    return F.group_norm(x, groups, sd[prefix + ".weight"], sd[prefix + ".bias"], eps)


def _unit(sd, p, x, stride):
    y = F.relu(_gn(_std_conv(x, sd[p + ".conv1.weight"]), sd, p + ".gn1", 32, 1e-6))
    y = F.relu(_gn(_std_conv(y, sd[p + ".conv2.weight"], stride, 1), sd, p + ".gn2", 32, 1e-6))
    y = _gn(_std_conv(y, sd[p + ".conv3.weight"]), sd, p + ".gn3", 32, 1e-6)
    if p + ".downsample.weight" in sd:
        channels = sd[p + ".downsample.weight"].shape[0]
        x = _gn(_std_conv(x, sd[p + ".downsample.weight"], stride), sd, p + ".gn_proj", channels, 1e-5)
    return F.relu(x + y)


def _resnet(sd, p, x):
    in_size = x.shape[-1]
    x = F.relu(_gn(_std_conv(x, sd[p + ".root.conv.weight"], 2, 3), sd, p + ".root.gn", 32, 1e-6))
    features = [x]
    x = F.max_pool2d(x, 3, 2, 0)
    for block in (1, 2, 3):
        n_units = len({k.split(".unit")[1].split(".")[0] for k in sd if k.startswith(f"{p}.body.block{block}.unit")})
        for unit in range(1, n_units + 1):
            x = _unit(sd, f"{p}.body.block{block}.unit{unit}", x, 2 if (unit == 1 and block > 1) else 1)
        if block < 3:
            right = int(in_size / 4 / block)
            feat = torch.zeros(x.shape[0], x.shape[1], right, right)
            feat[:, :, : x.shape[2], : x.shape[3]] = x
            features.append(feat)
    return x, features[::-1]


def _layer_norm(x, sd, p):
    return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], 1e-6)


def _linear(x, sd, p):
    return F.linear(x, sd[p + ".weight"], sd[p + ".bias"])


def _encoder(sd, p, x):
    x, skips = _resnet(sd, p + ".embeddings.hybrid_model", x)
    x = F.conv2d(x, sd[p + ".embeddings.patch_embeddings.weight"], sd[p + ".embeddings.patch_embeddings.bias"])
    x = x.flatten(2).transpose(-1, -2) + sd[p + ".embeddings.position_embeddings"]
    b, n, d = x.shape
    heads = 12
    for i in range(12):
        lp = f"{p}.encoder.layer.{i}"
        h = x
        x = _layer_norm(x, sd, lp + ".attention_norm")
        q, k, v = (
            _linear(x, sd, f"{lp}.attn.{name}").view(b, n, heads, d // heads).permute(0, 2, 1, 3)
            for name in ("query", "key", "value")
        )
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        context = (probs @ v).permute(0, 2, 1, 3).reshape(b, n, d)
        x = _linear(context, sd, lp + ".attn.out") + h
        h = x
        x = _layer_norm(x, sd, lp + ".ffn_norm")
        x = _linear(F.gelu(_linear(x, sd, lp + ".ffn.fc1")), sd, lp + ".ffn.fc2") + h
    return _layer_norm(x, sd, p + ".encoder.encoder_norm"), skips


def _seq_mlp(x, sd, p):
    return _linear(F.gelu(_linear(x, sd, p + ".0")), sd, p + ".2")


def _conv_bn_relu(x, sd, p):
    x = F.conv2d(x, sd[p + ".0.weight"], None, padding=1)
    x = F.batch_norm(x, sd[p + ".1.running_mean"], sd[p + ".1.running_var"], sd[p + ".1.weight"], sd[p + ".1.bias"],
                     False, 0.0, 1e-5)
    return F.relu(x)


def reference_forward(sd, wli, nbi):
    fw, skips = _encoder(sd, "transformer", wli)
    fn, _ = _encoder(sd, "transformer1", nbi)
    spec_w, spec_n = _seq_mlp(fw, sd, "fusion.feature_extractor_1"), _seq_mlp(fn, sd, "fusion.feature_extractor_2")
    share_w, share_n = _seq_mlp(fw, sd, "fusion.feature_extractor_3"), _seq_mlp(fn, sd, "fusion.feature_extractor_4")
    share = _seq_mlp(torch.cat([share_w, share_n], -1), sd, "fusion.share_fusion")
    fused = (
        _seq_mlp(spec_w, sd, "fusion.modal_fusion1")
        + _seq_mlp(share, sd, "fusion.modal_fusion2")
        + _seq_mlp(spec_n, sd, "fusion.modal_fusion3")
    )
    b, n, d = fused.shape
    grid = int(math.sqrt(n))
    x = _conv_bn_relu(fused.transpose(1, 2).reshape(b, d, grid, grid), sd, "decoder1.conv_more")
    for i in range(4):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if i < 3:
            x = torch.cat([x, skips[i]], dim=1)
        x = _conv_bn_relu(_conv_bn_relu(x, sd, f"decoder1.blocks.{i}.conv1"), sd, f"decoder1.blocks.{i}.conv2")
    return F.conv2d(x, sd["segmentation_head1.0.weight"], sd["segmentation_head1.0.bias"], padding=1)


# ---------------- tests ----------------
@pytest.fixture(scope="module")
def reference_state():
    return random_reference_state_dict(seed=0)


@pytest.fixture(scope="module")
def converted_paper(reference_state):
    model = build_model("paper")
    model.load_state_dict(convert_reference_state_dict(reference_state), strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def pair():
    """Sample 0: full-range frames. Sample 1: nearly flat frames, whose tiny root-conv
    variance makes the GroupNorm eps (1e-6 vs 1e-5) decide the logits."""
    g = torch.Generator().manual_seed(1)
    wli, nbi = torch.rand(2, 3, 224, 224, generator=g), torch.rand(2, 3, 224, 224, generator=g)
    wli[1], nbi[1] = 0.5 + 0.0005 * wli[1], 0.5 + 0.0005 * nbi[1]
    return wli, nbi


@pytest.mark.slow  # builds the 218 M-parameter paper model
def test_paper_has_218_5_m_parameters_and_reference_keys(converted_paper):
    assert round(sum(p.numel() for p in converted_paper.parameters()) / 1e6, 1) == 218.5
    assert len(converted_paper.state_dict()) == len(_read_listing())


@pytest.mark.slow  # builds the 218 M-parameter paper model
def test_converted_logits_match_reference_forward(converted_paper, reference_state, pair):
    wli, nbi = pair
    with torch.no_grad():
        ours = converted_paper(wli, nbi)
        ref = reference_forward(reference_state, wli, nbi)
    assert ours.shape == ref.shape == (2, 2, 224, 224)
    assert ref.abs().max() > 0.1  # the case is not trivially zero
    diff = (ours - ref).abs().max().item()
    print(f"paper parity: max abs logit difference {diff:.3g} (logit range {ref.abs().max().item():.3g})")
    assert diff <= TOL, f"max abs logit difference {diff:.3g} > {TOL}"


class _Stop(Exception):
    pass


@pytest.mark.slow  # builds the 218 M-parameter paper model
def test_paper_missing_nbi_feeds_wli_to_both_encoders(converted_paper, pair):
    """Fallback: the NBI encoder receives the WLI frame (stopped there: the rest is the parity path)."""
    wli = pair[0][:1]
    seen = []

    def capture(module, args):
        seen.append(args[0])
        raise _Stop

    handle = converted_paper.encoder_nbi.register_forward_pre_hook(capture)
    try:
        with torch.no_grad(), pytest.raises(_Stop):
            converted_paper(wli, None)
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0] is wli


def test_converter_rejects_unknown_keys_and_unwraps_wrappers(reference_state):
    wrapped = {"state_dict": {"module." + k: v for k, v in list(reference_state.items())[:50]}}
    wrapped["state_dict"]["module.transformer1.embeddings.position_embeddings"] = torch.zeros(1)
    wrapped["state_dict"]["module.fusion.share_fusion.0.bias"] = torch.zeros(1)
    assert "encoder_wli.pos_embed" in convert_foreign_state_dict(wrapped)
    bad = dict(reference_state)
    bad["fusion.projector.0.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"keys of no reference module.*fusion\.projector"):
        convert_reference_state_dict(bad)
    with pytest.raises(ValueError, match="unrecognised state dict"):
        convert_foreign_state_dict({"conv.weight": torch.zeros(1)})


@pytest.mark.slow  # builds the 218 M-parameter paper model
def test_cli_convert_reference_writes_a_loadable_checkpoint(reference_state, converted_paper, tmp_path, capsys):
    source = tmp_path / "epoch_99.pth"
    torch.save(reference_state, source)
    assert cli.main(["convert-reference", str(source), str(tmp_path / "paper.pt")]) == 0
    assert "model 'paper', 218.5 M parameters" in capsys.readouterr().out
    raw = read_checkpoint(tmp_path / "paper.pt")
    assert raw["model_name"] == "paper" and raw["extra"]["converted_from"] == "epoch_99.pth"
    expected = converted_paper.state_dict()
    assert set(raw["state_dict"]) == set(expected)
    for key in ("encoder_nbi.blocks.11.attn.out.weight", "decoder.blocks.2.conv1.1.running_var",
                "fusion.fuse_share.fc2.bias"):
        torch.testing.assert_close(raw["state_dict"][key], expected[key], atol=0, rtol=0)
    source.unlink()
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 not a torch file")
    assert cli.main(["convert-reference", str(tmp_path / "cut.pth"), str(tmp_path / "x.pt")]) == 1
    assert "cut.pth: not a readable torch checkpoint" in capsys.readouterr().err
