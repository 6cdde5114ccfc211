"""Write tests/data/clip_tokens.json: open_clip's CLIP token ids for a fixed, varied caption list.

The reference that `tests/test_classify_tokenizer.py` checks endofuse's own tokenizer against when
open_clip is not installed (CI). Regenerate with open-clip-torch installed (its package `__init__`
imports torchvision, so only its `tokenizer.py` is loaded, from its file):

    python tests/data/make_clip_tokens.py
"""
import importlib.util
import json
from pathlib import Path

OUT = Path(__file__).with_name("clip_tokens.json")
CONTEXT_LENGTHS = (77, 16)
CAPTIONS = [
    "an endoscopy image of normal mucosa",
    "an NBI endoscopy frame showing a small lesion",
    "a WLI endoscopy frame showing a large_lesion",
    "Lesion!!! (left vocal fold), size: ~3mm; margin -- irregular?",
    "2026-12-05 frame #00123 at 29.97 fps, 1,234 px, 100% confidence",
    "it's the patient's right side; they'll say we've seen I'm sure you'd",
    "UPPER Case MiXeD cAsE",
    "Läsion der Stimmlippe — größer als 5 mm",
    "声带白斑 NBI 图像",
    "emoji 🩺🔬 and symbols ©®™ ±×÷ °C",
    "naïve café résumé façade",
    "ΑΒΓ αβγ Ωμέγα кириллица",
    "ﬁne ligature and ＦＵＬＬＷＩＤＴＨ ＮＢＩ",
    "&lt;b&gt;NBI&lt;/b&gt; &amp; WLI",
    "&amp;lt;double&amp;gt; escaped &amp;amp;",
    "&#39;quoted&#39; &quot;text&quot; &nbsp;spaced &copy;",
    "schÃ¶n: The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
    "  tabs\tand\nnewlines   and\u00a0no-break\u2003em spaces  ",
    "control\x00null\x07bell\x1bescape",
    "<start_of_text>inside<end_of_text> and <END_OF_TEXT>",
    "don’t “curly” quotes",
    "...!!!???",
    "",
    "   ",
    " ".join(f"word{i}" for i in range(100)),
    "a" * 500,
    "small lesion on the left aryepiglottic fold with irregular microvessels " * 6,
]


def open_clip_tokenizer_module():
    spec = importlib.util.find_spec("open_clip")  # the folder, without running the package __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("open_clip_tokenizer_reference", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def reference_ids(module, context_length: int) -> list[list[int]]:
    """open_clip's ids per caption, trailing padding zeros dropped."""
    tokens = module.SimpleTokenizer(context_length=context_length)(CAPTIONS)
    return [[int(t) for t in row if t != 0] for row in tokens]


def main() -> None:
    module = open_clip_tokenizer_module()
    if module is None:
        raise SystemExit("needs open-clip-torch installed: pip install --no-deps open-clip-torch==3.3.0")
    from importlib.metadata import version

    payload = {"made_by": "tests/data/make_clip_tokens.py", "open_clip": version("open_clip_torch"),
               "captions": CAPTIONS, "ids": {str(n): reference_ids(module, n) for n in CONTEXT_LENGTHS}}
    OUT.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(CAPTIONS)} captions x context lengths {CONTEXT_LENGTHS}")


if __name__ == "__main__":
    main()
