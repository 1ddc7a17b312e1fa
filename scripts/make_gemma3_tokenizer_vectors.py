#!/usr/bin/env python3
"""Produces tests/model/data/gemma3_tokenizer_vectors.json: Gemma-3's token ids, computed by
Hugging Face transformers' GemmaTokenizer built from the Gemma-3-270M GGUF (the path transformers
takes for `AutoTokenizer.from_pretrained(dir, gguf_file=...)`: a BPE with byte fallback over the
GGUF vocabulary, merges rebuilt from the vocabulary's order, spaces normalized to "▁", no prefix
space; control tokens as special added tokens, user-defined ones (newline/space/tab runs) as
plain added tokens).

Needs transformers (>= 5) and its tokenizers, which saap's own environment does not carry; run
it once from a scratch venv (the output is committed):
    python -m venv /tmp/tf && /tmp/tf/bin/pip install transformers gguf numpy
    /tmp/tf/bin/python scripts/make_gemma3_tokenizer_vectors.py GEMMA.gguf EVAL_TXT

The JSON holds, per case string, the ids with special tokens parsed ("special") and not
("plain"), both without BOS; and for the whole evaluation text (BOS first, special tokens not
parsed) its size and FNV-1a 64 hash (a different eval.txt is not a tokenizer error), the token
count and the FNV-1a 64 hash of every block of 4096 ids (int32 little-endian), so the test can
say where a difference starts without the repository carrying 200k ids.
"""
import json
import os
import sys

from transformers import AutoTokenizer

BLOCK = 4096

CASES = [
    "Hello world", "hello", " hello", "  hello", "hello ", "hello  ", "a  b", "a   the", "a    b     c",
    "The quick brown fox jumps over the lazy dog.", "I'm sure it's fine, isn't it?",
    "café naïve façade résumé Ångström", "Straße über Ölfeld", "Ελληνικά κείμενα", "Русский текст",
    "日本語のテキストです。", "中文文本，包含标点。", "한국어 텍스트", "עברית ו-العربية", "हिन्दी पाठ",
    "emoji 😀😃 👍🏽 👨‍👩‍👧 🇫🇷", "math: ∀x∈ℝ, x² ≥ 0", "12345", "3.14159", "1,000,000", "0x1F 1e-9",
    "def f(x):\n    return x * 2\n", "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }",
    "<div class=\"x\">&amp;</div>", "a\tb\t\tc", "\t\tindented", "line1\nline2\r\nline3",
    "\n", "\n\n", "\n\n\n", "para one.\n\npara two.\n\n\n\nfour", "   ", " ", "\t", "trailing spaces   ",
    "   leading", "mixed \t \n whitespace", "\u00a0nbsp\u3000ideographic", "zero\u200bwidth",
    "control\x01\x02chars", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text<eos>", "<unused0> <mask> [multimodal]", "<start_of_image>", "",
]


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "%016x" % h


def ids_bytes(ids):
    return b"".join(int(i).to_bytes(4, "little", signed=True) for i in ids)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, text_path = sys.argv[1], sys.argv[2]
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(model)), gguf_file=os.path.basename(model))
    cases = []
    for text in CASES:
        cases.append({"text": text,
                      "special": tok(text, add_special_tokens=False)["input_ids"],
                      "plain": tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]})
    with open(text_path, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    ids = tok(text, split_special_tokens=True)["input_ids"]  # BOS first (add_bos_token)
    assert ids[0] == tok.bos_token_id
    out = {"model": os.path.basename(model), "generator": "scripts/make_gemma3_tokenizer_vectors.py",
           "transformers_tokenizer": type(tok).__name__, "cases": cases,
           "eval_txt": {"bytes": len(raw), "text_fnv1a64": fnv1a64(raw), "tokens": len(ids), "block": BLOCK,
                        "block_fnv1a64": [fnv1a64(ids_bytes(ids[i:i + BLOCK])) for i in range(0, len(ids), BLOCK)]}}
    path = "tests/model/data/gemma3_tokenizer_vectors.json"
    with open(path, "w") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
    print(f"{len(cases)} cases, eval.txt {len(ids)} tokens -> {path}")


if __name__ == "__main__":
    main()
