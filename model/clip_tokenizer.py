"""CLIP's byte-level BPE tokenizer over CLIP's own vocabulary (shipped in `clip_vocab/`).

The same steps as open_clip's `SimpleTokenizer` (itself OpenAI CLIP's), checked
token for token against open_clip 3.3.0 (`tests/test_classify_tokenizer.py`; the
ids it gave for a fixed caption list are kept in `tests/data/clip_tokens.json`),
without depending on open-clip-torch, whose torchvision requirement does not
install beside the CPU torch:

1. clean: ftfy's `fix_text`, HTML entities unescaped (twice, as CLIP does),
   runs of whitespace collapsed to one space, lower case;
2. pre-split with CLIP's regex (the two special tokens, English contractions,
   letter runs, single digits, runs of other non-space characters);
3. each piece as UTF-8 bytes, each byte as one printable character (GPT-2's
   reversible byte map), the last one marked as word end (`</w>`);
4. BPE: repeatedly merge the adjacent pair with the lowest merge rank;
5. ids framed by `<start_of_text>` / `<end_of_text>`, zero-padded to the
   context length; a longer text is cut and its last kept id set to
   `<end_of_text>`.

The vocabulary file is OpenAI CLIP's (MIT licence, `clip_vocab/LICENSE`).
"""
from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from pathlib import Path

import torch

VOCAB_FILE = Path(__file__).with_name("clip_vocab") / "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 512 byte symbols + merges + 2 specials = 49408 ids
START, END = "<start_of_text>", "<end_of_text>"
WORD_END = "</w>"
# contractions before letter runs so "it's" splits as it + 's; digits one by one
SPLIT = START + "|" + END + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def byte_symbols() -> tuple[list[str], list[int]]:
    """(symbols, their bytes) in CLIP's vocabulary order: the printable bytes stand for themselves and
    come first ('!'..'~', '¡'..'¬', '®'..'ÿ'), then the other 68 bytes as chr(256), chr(257), ... in
    byte order (so no symbol is whitespace or a control character)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = sorted(set(range(256)) - set(printable))
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))], printable + others


def clean(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """`tokenizer(texts)` -> (N, context_length) int64 ids, as CLIP's tokenizer."""

    def __init__(self, context_length: int = 77, vocab_file: Path = VOCAB_FILE):
        import regex

        if context_length < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)
        lines = gzip.decompress(Path(vocab_file).read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1:MERGES + 1]]  # line 0 is a version header
        symbols, byte_order = byte_symbols()
        self.byte_char = [""] * 256
        for symbol, byte in zip(symbols, byte_order, strict=True):
            self.byte_char[byte] = symbol
        vocab = symbols + [s + WORD_END for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self.vocab_size = len(vocab)
        self.pattern = regex.compile(SPLIT, regex.IGNORECASE)
        self._words: dict[str, list[int]] = {}

    def _word_ids(self, piece: str) -> list[int]:
        """The ids of one pre-split piece (memoised: captions repeat their words)."""
        cached = self._words.get(piece)
        if cached is not None:
            return cached
        if piece in (START, END):
            ids = [self.ids[piece]]
        else:
            parts = [self.byte_char[b] for b in piece.encode("utf-8")]
            parts[-1] += WORD_END
            while len(parts) > 1:
                pairs = zip(parts[:-1], parts[1:], strict=True)
                rank, first, second = min((self.ranks.get(pair, MERGES), *pair) for pair in pairs)
                if rank == MERGES:  # no adjacent pair is a merge
                    break
                merged, i = [], 0
                while i < len(parts):  # every occurrence, left to right, without overlap
                    if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            ids = [self.ids[p] for p in parts]
        self._words[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The ids of `text` without the start/end tokens and without truncation."""
        return [i for piece in self.pattern.findall(clean(text)) for i in self._word_ids(piece)]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id][: self.context_length]
            ids[-1] = self.end_id  # a cut text still ends with <end_of_text>
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@functools.lru_cache(maxsize=4)
def get_tokenizer(context_length: int = 77) -> ClipTokenizer:
    return ClipTokenizer(context_length)


def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """(N, context_length) int64 CLIP token ids of `texts`."""
    return get_tokenizer(context_length)(list(texts))
