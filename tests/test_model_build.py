"""build_model configs: shapes, missing-NBI path, forward_train terms, gradients, bad input."""
import pytest
import torch

from endofuse.model import AUX_KEYS, MODEL_CONFIGS, build_model, list_models, losses

LIGHT = ["tiny", "small"]  # paper is built once, in test_model_convert.py


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name).eval() for name in LIGHT}


def _pair(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = model.img_size
    return torch.rand(batch, 3, s, s, generator=g), torch.rand(batch, 3, s, s, generator=g)


def test_registry_lists_the_three_configs():
    assert list_models() == ["paper", "small", "tiny"]
    assert set(MODEL_CONFIGS) == {"paper", "small", "tiny"}


@pytest.mark.parametrize("name", LIGHT)
def test_forward_shapes_and_attributes(models, name):
    model = models[name]
    wli, nbi = _pair(model)
    with torch.no_grad():
        fused, wli_only = model(wli, nbi), model(wli, None)
    s = model.img_size
    assert (model.name, model.num_classes) == (name, 2)
    assert s % 16 == 0 and s < 224
    assert fused.shape == wli_only.shape == (2, 2, s, s)
    assert fused.dtype == torch.float32 and torch.isfinite(fused).all()
    # the missing path must actually differ from the fused one (the NBI tokens matter)
    assert not torch.allclose(fused, wli_only)


def test_param_ladder_tiny_small_paper(models):
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    assert counts["tiny"] <= 3_000_000
    assert counts["tiny"] < counts["small"] < 218_000_000


def test_missing_nbi_skips_the_nbi_encoder_and_uses_the_token(models):
    model = models["tiny"]
    wli, _ = _pair(model, batch=1)
    calls = []
    handle = model.encoder_nbi.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            before = model(wli, None)
            model.missing_nbi_token.add_(1.0)
            after = model(wli, None)
            model.missing_nbi_token.sub_(1.0)
    finally:
        handle.remove()
    assert calls == []
    assert not torch.allclose(before, after)


def test_batch_items_are_independent_in_eval(models):
    model = models["tiny"]
    wli, nbi = _pair(model, batch=3)
    with torch.no_grad():
        whole = model(wli, nbi)
        single = model(wli[1:2], nbi[1:2])
    torch.testing.assert_close(whole[1:2], single, atol=1e-5, rtol=1e-4)


def test_forward_train_terms_match_plain_losses_on_the_parts():
    torch.manual_seed(1)
    model = build_model("tiny", dropout=0.0, modality_dropout=0.0).train()
    wli, nbi = _pair(model, batch=3, seed=3)
    torch.manual_seed(5)
    logits, aux = model.forward_train(wli, nbi, temperature=0.1)
    assert set(aux) == set(AUX_KEYS)
    # independent recomputation from the public sub-modules
    with torch.no_grad():
        out_w = model.encoder_wli(wli, with_shallow=True)
        out_n = model.encoder_nbi(nbi, with_shallow=True)
        parts = model.fusion.split(out_w.tokens, out_n.tokens)
        pool_w = model.pool_wli(torch.cat(out_w.shallow, -1))
        pool_n = model.pool_nbi(torch.cat(out_n.shallow, -1))
        expected = losses.disentangle(parts["spec_w"], parts["spec_n"], parts["share_w"], parts["share_n"])
        expected["da"] = losses.mmd(pool_n, pool_w)
        expected["dacl"] = losses.dacl(parts["share_w"], parts["share_n"], parts["spec_w"], parts["spec_n"], 0.1)
    assert len(out_w.shallow) == 3 and out_w.shallow[0].shape[-1] == model.config.hidden_size
    for key in AUX_KEYS:
        torch.testing.assert_close(aux[key].detach(), expected[key], atol=1e-5, rtol=1e-4, msg=key)
    assert logits.shape == (3, 2, model.img_size, model.img_size)


def test_gradients_reach_both_encoders_and_the_pools():
    torch.manual_seed(2)
    model = build_model("tiny", modality_dropout=0.0).train()
    wli, nbi = _pair(model, batch=2, seed=4)
    logits, aux = model.forward_train(wli, nbi, temperature=0.1)
    (logits.mean() + aux["mi"] + 0.01 * aux["dacl"] + aux["da"]).backward()
    for part in (model.encoder_wli, model.encoder_nbi, model.pool_wli, model.pool_nbi):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_modality_dropout_leaves_dropped_samples_out_of_aux_terms():
    torch.manual_seed(3)
    model = build_model("tiny", dropout=0.0, modality_dropout=1.0).train()
    wli, nbi = _pair(model, batch=2, seed=6)
    logits, aux = model.forward_train(wli, nbi, temperature=0.1)
    assert all(float(aux[k]) == 0.0 for k in AUX_KEYS)
    # every sample dropped == the missing-NBI path; the missing token gets gradient
    torch.testing.assert_close(logits, model(wli, None), atol=1e-5, rtol=1e-4)
    logits.sum().backward()
    assert model.missing_nbi_token.grad.abs().sum() > 0


def test_modality_dropout_keeps_aux_of_kept_samples():
    """With half the batch forced dropped, aux equals the aux of the kept half alone."""
    torch.manual_seed(4)
    model = build_model("tiny", dropout=0.0, modality_dropout=0.5).train()
    wli, nbi = _pair(model, batch=4, seed=7)
    forced = torch.tensor([True, False, True, False])
    model._nbi_dropped = lambda batch, nbi, device: forced  # deterministic drop pattern
    _, aux = model.forward_train(wli, nbi, temperature=0.1)
    del model._nbi_dropped
    model.config = model.config.__class__(**{**model.config.__dict__, "modality_dropout": 0.0})
    _, aux_kept = model.forward_train(wli[~forced], nbi[~forced], temperature=0.1)
    for key in AUX_KEYS:
        torch.testing.assert_close(aux[key], aux_kept[key], atol=1e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize(
    "wli_shape, nbi_shape, match",
    [
        ((1, 4, 160, 160), (1, 3, 160, 160), "3 channels"),
        ((1, 3, 160, 160), (1, 1, 160, 160), "nbi must have 3 channels"),
        ((2, 3, 160, 160), (1, 3, 160, 160), "batch sizes differ"),
        ((1, 3, 150, 150), (1, 3, 150, 150), "not divisible by 16"),
        ((1, 3, 192, 192), (1, 3, 192, 192), "does not match model 'tiny' input size 160x160"),
        ((3, 160, 160), None, r"\(B, 3, H, W\)"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_expectation(models, wli_shape, nbi_shape, match):
    model = models["tiny"]
    nbi = None if nbi_shape is None else torch.rand(nbi_shape)
    with pytest.raises(ValueError, match=match):
        model(torch.rand(wli_shape), nbi)


def test_uint8_input_is_rejected(models):
    with pytest.raises(ValueError, match="float RGB"):
        models["tiny"](torch.zeros(1, 3, 160, 160, dtype=torch.uint8), None)


def test_builder_rejects_unknown_names_and_keys():
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown config keys"):
        build_model("tiny", widht=3)
    with pytest.raises(ValueError, match="multiple of 16"):
        build_model("tiny", img_size=100)


def test_overrides_change_the_numbers():
    model = build_model("tiny", num_classes=3, img_size=64, depth=2, shallow_taps=[1, 2])
    assert (model.img_size, model.num_classes, len(model.encoder_wli.blocks)) == (64, 3, 2)
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64), None).shape == (1, 3, 64, 64)
