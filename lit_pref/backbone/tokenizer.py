"""An offline CLIP tokenizer built from the BPE vocabulary that open_clip ships.

No hub download is needed: ``open_clip`` bundles ``bpe_simple_vocab_16e6.txt.gz``,
the same byte-pair vocabulary (49,408 tokens, same ids) as OpenAI's CLIP tokenizer
that Stable Diffusion uses.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The CLIP BPE vocabulary (token -> id) and merge list, read from open_clip's bundled file."""
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    tokens += ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == CLIP_VOCAB_SIZE, len(tokens)
    return {tok: i for i, tok in enumerate(tokens)}, merges


def offline_clip_tokenizer(model_max_length: int = 77, pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A transformers ``CLIPTokenizer`` equal to ``openai/clip-vit-large-patch14``'s, built offline.

    Args:
        model_max_length: Maximum sequence length (77 for every Stable Diffusion text encoder).
        pad_token: Padding token; SD1.x pads with ``<|endoftext|>``, SDXL's second tokenizer with ``!``.
    """
    vocab, merges = clip_vocab_and_merges()
    # transformers 5.x: pass vocab/merges as objects; the *_file arguments build an almost empty vocabulary.
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length, pad_token=pad_token)


def _bpe_merges_used(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one word (lowest rank first), as in the reference algorithm."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def reduced_clip_tokenizer(words: list[str], model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary is the 512 byte symbols plus what ``words`` need.

    ``words`` are tokenized exactly as the full CLIP tokenizer does (same pieces, other ids); any other text
    still tokenizes, into smaller pieces. A text encoder on it needs an embedding table of ~600 rows
    instead of 49,408.

    Args:
        words: Words (lower case, no spaces) to keep as CLIP would split them.
        model_max_length: Maximum sequence length.
    """
    full_vocab, full_merges = clip_vocab_and_merges()
    ranks = {merge: i for i, merge in enumerate(full_merges)}
    byte_chars = list(_bytes_to_unicode().values())
    used = {m for w in words for m in _bpe_merges_used(w.lower(), ranks)}
    merges = sorted(used, key=ranks.__getitem__)
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def write_bpe_files(folder: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the files of official CLIP tokenizer folders) beside the
    ``tokenizer.json`` that transformers' ``save_pretrained`` wrote in ``folder``."""
    model = json.loads((folder / "tokenizer.json").read_text())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
