"""The ENTRep classifier's blocks against hand-computed values and plain-torch references."""
import math

import pytest
import torch
import torch.nn.functional as F

from endofuse.errors import EndofuseError
from endofuse.model.entrep import build_entrep, fuse_cls, same_class_partners, slerp
from endofuse.model.entrep_weights import (
    load_classifier,
    load_clip_weights,
    save_classifier,
    tokenize,
)

CLASSES = ["a", "b", "c"]
SMALL = dict(img_size=32, patch_size=8, vision_width=32, vision_layers=3, vision_heads=4, embed_dim=16,
             context_length=16, text_width=32, text_layers=2, text_heads=4, lora_rank=2, cls_layers=(2, 3))


def small(**kw):
    torch.manual_seed(0)
    return build_entrep("entrep-tiny", CLASSES, **{**SMALL, **kw}).eval()


def test_lora_merge_unmerge_same_outputs_and_restores_weights():
    model = small()
    with torch.no_grad():  # B starts at zero; give every LoRA a real delta
        for p in model.lora_parameters():
            p.normal_(0, 0.2)
    images, tokens = torch.rand(2, 3, 32, 32), tokenize(["a small lesion", "normal mucosa"], 16)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".lora." not in k}
    ref_img, ref_txt = model.encode_image(images), model.encode_text(tokens)
    model.merge_lora()
    w = model.visual.transformer.resblocks[0].attn
    assert not torch.allclose(w.in_proj_weight, before["visual.transformer.resblocks.0.attn.in_proj_weight"])
    torch.testing.assert_close(model.encode_image(images), ref_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.encode_text(tokens), ref_txt, rtol=1e-4, atol=1e-5)
    model.unmerge_lora()
    for k, v in model.state_dict().items():
        if k in before:
            torch.testing.assert_close(v, before[k], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.encode_image(images), ref_img, rtol=1e-4, atol=1e-5)


def test_lora_delta_is_scaled_low_rank_product():
    attn = small().visual.transformer.resblocks[1].attn
    lora = attn.lora["v"]
    with torch.no_grad():
        lora.a.copy_(torch.tensor([[1.0] + [0.0] * 31, [0.0, 2.0] + [0.0] * 30]))
        lora.b.zero_()
        lora.b[3, 0], lora.b[5, 1] = 1.0, -1.0
    delta = lora.delta().detach()
    assert delta[3, 0] == pytest.approx(1.0 * lora.scale) and delta[5, 1] == pytest.approx(-2.0 * lora.scale)
    assert int((delta != 0).sum()) == 2
    assert lora.scale == pytest.approx(8.0 / 2)  # entrep-tiny: alpha 8, rank 2 here


def test_fuse_cls_hand_computed():
    tokens = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[3.0, 3.0]]])  # L=3, B=1, D=2
    logits = torch.tensor([0.0, math.log(2.0), math.log(5.0)])  # softmax -> 1/8, 2/8, 5/8
    out = fuse_cls(tokens, logits)
    torch.testing.assert_close(out, torch.tensor([[1 / 8 + 15 / 8, 4 / 8 + 15 / 8]]))


def test_multi_level_cls_matches_layerwise_reference():
    model = small(cls_layers=(1, 3))
    with torch.no_grad():
        model.visual.cls_fusion_logits.copy_(torch.tensor([0.3, -0.4]))
    images = torch.rand(2, 3, 32, 32)
    v = model.visual
    x = v.conv1((images - v.mean) / v.std).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(2, 1, -1), x], 1) + v.positional_embedding
    x = v.ln_pre(x)
    cls = []
    for block in v.transformer.resblocks:
        x = block(x)
        cls.append(v.ln_post(x[:, 0]))
    w = torch.softmax(torch.tensor([0.3, -0.4]), 0)
    expected = (w[0] * cls[0] + w[1] * cls[2]) @ v.proj
    torch.testing.assert_close(model.encode_image(images), expected, rtol=1e-5, atol=1e-5)


def test_slerp_hand_computed():
    a = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 1.0, 0.0], [math.cos(1.0), math.sin(1.0), 0.0]])
    t = torch.tensor([0.5, 0.25])
    out = slerp(a, b, t)
    torch.testing.assert_close(out[0], torch.tensor([2 ** -0.5, 2 ** -0.5, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([math.cos(0.25), math.sin(0.25), 0.0]))  # a quarter of the arc
    torch.testing.assert_close(slerp(a, b, torch.zeros(2)), a)
    torch.testing.assert_close(slerp(a, b, torch.ones(2)), b, atol=1e-5, rtol=0)
    same = slerp(a[:1], a[:1], torch.tensor([0.3]))  # parallel: no 0/0
    torch.testing.assert_close(same, a[:1])


def test_same_class_partners_keep_labels():
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    partners = same_class_partners(labels, torch.Generator().manual_seed(3))
    assert torch.equal(labels[partners], labels)
    assert partners[3] == 3  # the only member of class 2


# ---- OpenAI / open_clip key layout ----
def openai_state(c: dict, vocab: int) -> dict:
    """A random CLIP state dict written from the OpenAI layout (not from our module names)."""
    g = torch.Generator().manual_seed(1)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.1

    s = {}
    vw, tw, grid = c["vision_width"], c["text_width"], c["img_size"] // c["patch_size"]

    def blocks(prefix, width, layers):
        for i in range(layers):
            p = f"{prefix}resblocks.{i}."
            s.update({p + "attn.in_proj_weight": r(3 * width, width), p + "attn.in_proj_bias": r(3 * width),
                      p + "attn.out_proj.weight": r(width, width), p + "attn.out_proj.bias": r(width),
                      p + "ln_1.weight": 1 + r(width), p + "ln_1.bias": r(width),
                      p + "ln_2.weight": 1 + r(width), p + "ln_2.bias": r(width),
                      p + "mlp.c_fc.weight": r(4 * width, width), p + "mlp.c_fc.bias": r(4 * width),
                      p + "mlp.c_proj.weight": r(width, 4 * width), p + "mlp.c_proj.bias": r(width)})

    s.update({"visual.conv1.weight": r(vw, 3, c["patch_size"], c["patch_size"]), "visual.class_embedding": r(vw),
              "visual.positional_embedding": r(grid * grid + 1, vw), "visual.ln_pre.weight": 1 + r(vw),
              "visual.ln_pre.bias": r(vw), "visual.ln_post.weight": 1 + r(vw), "visual.ln_post.bias": r(vw),
              "visual.proj": r(vw, c["embed_dim"])})
    blocks("visual.transformer.", vw, c["vision_layers"])
    s.update({"token_embedding.weight": r(vocab, tw), "positional_embedding": r(c["context_length"], tw),
              "ln_final.weight": 1 + r(tw), "ln_final.bias": r(tw), "text_projection": r(tw, c["embed_dim"]),
              "logit_scale": torch.tensor(4.0)})
    blocks("transformer.", tw, c["text_layers"])
    return s


def reference_tower(s: dict, prefix: str, x: torch.Tensor, layers: int, heads: int, mask=None) -> torch.Tensor:
    """Residual blocks with torch's own multi-head attention (what open_clip runs), exact GELU."""
    for i in range(layers):
        p = f"{prefix}resblocks.{i}."
        h = F.layer_norm(x, x.shape[-1:], s[p + "ln_1.weight"], s[p + "ln_1.bias"]).transpose(0, 1)
        a, _ = F.multi_head_attention_forward(
            h, h, h, x.shape[-1], heads, s[p + "attn.in_proj_weight"], s[p + "attn.in_proj_bias"], None, None, False,
            0.0, s[p + "attn.out_proj.weight"], s[p + "attn.out_proj.bias"], need_weights=False, attn_mask=mask)
        x = x + a.transpose(0, 1)
        h = F.layer_norm(x, x.shape[-1:], s[p + "ln_2.weight"], s[p + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"])),
                     s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"])
        x = x + h
    return x


def test_clip_key_layout_loader_matches_reference_forward(tmp_path):
    c = dict(SMALL)
    model = small(cls_layers=(3,))
    state = openai_state(c, model.config.vocab_size)
    path = tmp_path / "clip.pt"
    # open_clip training checkpoints: {"state_dict": {"module.<key>": ...}} plus OpenAI's extra entries
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 3}, path)
    report = load_clip_weights(model, path)
    assert report["loaded"] == len(state)
    for k, v in state.items():
        torch.testing.assert_close(model.state_dict()[k], v)

    images = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])
    x = F.conv2d((images - mean[:, None, None]) / std[:, None, None], state["visual.conv1.weight"], stride=8)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([state["visual.class_embedding"].expand(2, 1, -1), x], 1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (32,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = reference_tower(state, "visual.transformer.", x, 3, 4)
    expected = F.layer_norm(x[:, 0], (32,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    torch.testing.assert_close(model.encode_image(images), expected @ state["visual.proj"], rtol=1e-4, atol=1e-4)

    tokens = tokenize(["a large lesion", "an NBI frame"], 16)
    t = state["token_embedding.weight"][tokens] + state["positional_embedding"]
    causal = torch.full((16, 16), float("-inf")).triu(1)
    t = reference_tower(state, "transformer.", t, 2, 4, causal)
    t = F.layer_norm(t, (32,), state["ln_final.weight"], state["ln_final.bias"])
    eot = (tokens == 49407).int().argmax(-1)  # the end-of-text token's position
    expected_text = t[torch.arange(2), eot] @ state["text_projection"]
    torch.testing.assert_close(model.encode_text(tokens), expected_text, rtol=1e-4, atol=1e-4)


def test_clip_loader_rejects_wrong_shapes_and_missing_keys(tmp_path):
    model = small()
    state = openai_state(dict(SMALL), model.config.vocab_size)
    bad = dict(state, **{"visual.proj": torch.zeros(5, 5)})
    del bad["ln_final.bias"]
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(EndofuseError, match=r"1 missing, 1 wrong shape.*ln_final\.bias.*visual\.proj"):
        load_clip_weights(model, tmp_path / "bad.pt")


def test_clip_loader_resizes_vision_positions(tmp_path):
    model = small(img_size=48)  # 6x6 grid; the checkpoint has 4x4
    torch.save(openai_state(dict(SMALL), model.config.vocab_size), tmp_path / "clip.pt")
    load_clip_weights(model, tmp_path / "clip.pt")
    assert model.visual.positional_embedding.shape == (37, 32)
    assert model.encode_image(torch.rand(1, 3, 48, 48)).shape == (1, 16)


def test_classifier_checkpoint_round_trip(tmp_path):
    model = small(slerp_prob=0.0)
    path = save_classifier(tmp_path / "c.pt", model)
    loaded = load_classifier(path)
    assert loaded.classes == CLASSES and loaded.config == model.config
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    torch.save({"format": "endofuse-checkpoint"}, tmp_path / "seg.pt")
    with pytest.raises(EndofuseError, match="not an endofuse classifier checkpoint"):
        load_classifier(tmp_path / "seg.pt")


@pytest.mark.slow
def test_b16_configuration_is_clip_vit_b16():
    model = build_entrep("entrep-b16", ["x", "y"])
    clip_part = sum(p.numel() for n, p in model.named_parameters()
                    if ".lora." not in n and not n.startswith("classifier") and "cls_fusion" not in n)
    assert clip_part == 149_620_737  # OpenAI ViT-B/16 (open_clip ViT-B-16)
    assert model.visual.positional_embedding.shape == (197, 768) and model.token_embedding.weight.shape == (49408, 512)
