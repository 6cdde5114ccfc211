"""endofuse's CLIP tokenizer against open_clip's, token for token.

Always: against the ids open_clip produced for a fixed, varied caption list
(tests/data/clip_tokens.json, written by tests/data/make_clip_tokens.py).
With open-clip-torch installed: against its tokenizer directly, on that list
and on random strings. Nothing here needs open_clip to be importable.
"""
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from endofuse.model import clip_tokenizer
from endofuse.model.clip_tokenizer import ClipTokenizer

DATA = Path(__file__).parent / "data"
FIXTURE = json.loads((DATA / "clip_tokens.json").read_text(encoding="utf-8"))


def _reference_module():
    spec = importlib.util.spec_from_file_location("make_clip_tokens", DATA / "make_clip_tokens.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ids_without_padding(tokens) -> list[list[int]]:
    return [[int(t) for t in row if t != 0] for row in tokens]


@pytest.mark.parametrize("context_length", [77, 16])
def test_ids_match_open_clips_recorded_ids(context_length):
    expected = FIXTURE["ids"][str(context_length)]
    got = ids_without_padding(ClipTokenizer(context_length)(FIXTURE["captions"]))
    for caption, want, have in zip(FIXTURE["captions"], expected, got, strict=True):
        assert have == want, f"{caption[:60]!r}: {have[:12]} != {want[:12]}"
    assert max(len(row) for row in got) == context_length  # the long captions were cut
    assert all(row[-1] == 49407 for row in got)  # ... and still end with <end_of_text>


def test_hand_checked_ids_and_truncation():
    tok = ClipTokenizer(5)
    # 188 printable byte symbols come first, so "a" + word end is 256 + ("a" - "!") = 320
    assert tok.vocab_size == 49408 and (tok.start_id, tok.end_id) == (49406, 49407)
    assert tok(["a"]).tolist() == [[49406, 320, 49407, 0, 0]]
    assert tok(["a a a a a a"]).tolist() == [[49406, 320, 320, 320, 49407]]  # cut, the end token kept
    assert tok(["A\t\n  a"]).tolist() == tok(["a a"]).tolist()  # lower case, whitespace collapsed
    assert tok(["&amp;amp;"]).tolist() == tok(["&"]).tolist()  # HTML unescaped twice, as CLIP


def test_needs_no_open_clip(monkeypatch):
    """The tokenizer works where open_clip cannot even be looked up (the [classify] install)."""

    class NoOpenClip:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "open_clip":
                raise ModuleNotFoundError("open_clip is not installed here")
            return None

    monkeypatch.setattr(sys, "meta_path", [NoOpenClip(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    from endofuse.model import entrep_weights

    clip_tokenizer.get_tokenizer.cache_clear()
    try:
        got = ids_without_padding(entrep_weights.tokenize(FIXTURE["captions"], 77))
    finally:
        clip_tokenizer.get_tokenizer.cache_clear()
    assert got == FIXTURE["ids"]["77"]


def random_captions(count: int, seed: int = 0) -> list[str]:
    pieces = ["lesion", "NBI", "WLI", "'s", "'LL", "3.5", "mm", "&amp;", "&lt;", "&#233;", "--", "!?", "(", ")",
              "é", "ß", "東京", "🩺", "\u00a0", "\t", " ", "  ", "Ã©", "’", "x", "_", "<end_of_text>", "0", "99"]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(count)]


def test_matches_open_clip_directly():
    module = _reference_module().open_clip_tokenizer_module()
    if module is None:
        pytest.skip("open-clip-torch is not installed (the recorded ids above still checked the tokenizer)")
    captions = FIXTURE["captions"] + random_captions(300)
    for context_length in (77, 16):
        reference = module.SimpleTokenizer(context_length=context_length)(captions)
        assert ClipTokenizer(context_length)(captions).tolist() == reference.tolist()
