#!/usr/bin/env python3
"""Produces tests/model/data/tokenizer_vectors.json: token ids for a fixed set of byte strings,
computed by the HF `tokenizers` package (Rust) from the default model's GGUF vocabulary.

Run once from the repository root (the output is committed):
    python3 scripts/make_tokenizer_vectors.py

Why this configuration is SmolLM2's tokenizer:
  * The GGUF says tokenizer.ggml.model = "gpt2" (byte-level BPE) and tokenizer.ggml.pre =
    "smollm". llama.cpp's llama-vocab.cpp maps "smollm" (with starcoder, refact, ...) to two
    regexes applied in turn: "\\p{N}" (every digit split off alone), then the GPT-2 regex
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)".
  * HF's SmolLM2 tokenizer.json expresses the same thing as the pre-tokenizer
    Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False, use_regex=True)],
    a BPE model without unk token or byte fallback, and added special tokens (ids 0..16, the
    GGUF's control tokens) that are matched verbatim before pre-tokenization.
  * The BPE model below is built from the GGUF's own tokens and merges (not from a download), so
    the reference and saap read the same vocabulary; only the algorithms are independent.

The same vocabulary is also run through the plain GPT-2 pre-tokenizer and the Llama-3 one
(Split on Llama-3's regex, then ByteLevel without regex, as Meta's tokenizer.json does) so the
C++ test can check saap's other two splitters on GGUFs that differ only in tokenizer.ggml.pre.

SentencePiece BPE (tokenizer.ggml.model = "llama", the Llama 2 family) is checked on a small
vocabulary trained here with `tokenizers` (saved in the JSON, since no Llama 2 GGUF ships with
saap), laid out as a Llama GGUF lays one out (<unk>, <s>, </s>, the 256 <0xXX> byte tokens,
then pieces with descending scores). The reference is that vocabulary converted the way HF's
LlamaConverter converts a SentencePiece model: a BPE with byte fallback whose merges are every
pair of pieces that concatenates to a piece, ranked by that piece's score, after the
normalizer Prepend("▁") + Replace(" ", "▁").

Strings with invalid UTF-8 cannot be passed to `tokenizers` (it takes str). saap decodes each
byte outside a well-formed sequence as a code point of its own, of no letter/number/space
class, whose byte-level character is the byte itself. The reference reproduces that with the
same library: invalid bytes are replaced by private-use characters (also of no class), the
string is pre-tokenized, each piece is mapped back to its original bytes by offsets, and the
BPE model tokenizes those bytes' byte-level characters. For valid strings that path is checked
against Tokenizer.encode below.
"""
import json
import os
import subprocess
import sys

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PLACEHOLDER_BASE = 0xF0000  # Supplementary Private Use Area-A: category Co, like an invalid byte


def read_vocab(path):
    reader = gguf.GGUFReader(path)

    def strings(key):
        f = reader.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    f = reader.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    assert bytes(reader.fields["tokenizer.ggml.pre"].parts[-1]).decode() == "smollm"
    return strings("tokenizer.ggml.tokens"), types, strings("tokenizer.ggml.merges")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build(tokens, types, merges, pre, special):
    vocab = {t: i for i, t in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    tok = Tokenizer(bpe)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    elif pre == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    elif pre == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if special:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == 3])
    return tok


def encode_bytes(tok, data, b2u):
    """Ids for arbitrary bytes (no special-token parsing), via pre-tokenizer + BPE model, and
    the pre-tokenizer's pieces as the original bytes."""
    text = data.decode("utf-8", "surrogateescape")
    raw = []  # per character of `text`: the bytes it stands for
    chars = []
    for ch in text:
        if 0xDC80 <= ord(ch) <= 0xDCFF:  # an invalid byte
            raw.append(bytes([ord(ch) - 0xDC00]))
            chars.append(chr(PLACEHOLDER_BASE + ord(ch) - 0xDC00))
        else:
            raw.append(ch.encode("utf-8"))
            chars.append(ch)
    ids = []
    pieces = []
    for _, (lo, hi) in tok.pre_tokenizer.pre_tokenize_str("".join(chars)):
        piece = b"".join(raw[lo:hi])
        pieces.append(piece.hex())
        ids += [t.id for t in tok.model.tokenize("".join(b2u[b] for b in piece))]
    return ids, pieces


CASES = [
    "Hello world", "Hello, world!", "hello", " hello", "  hello", "hello ", "hello  ",
    "The quick brown fox jumps over the lazy dog.",
    "I'm sure it's fine, isn't it? We'll see, they've said, you'd know, I'd've",
    "DON'T SHOUT, IT'S LOUD", "''s 's 'S 'x' ' '", "rock 'n' roll",
    "café naïve façade résumé Ångström", "Straße über Ölfeld", "Ελληνικά κείμενα", "Русский текст здесь",
    "日本語のテキストです。", "中文文本，包含标点。", "한국어 텍스트", "עברית ו-العربية", "हिन्दी पाठ",
    "ภาษาไทย", "emoji 😀😃 👍🏽 👨‍👩‍👧 🇫🇷", "🤖🤖🤖", "math: ∀x∈ℝ, x² ≥ 0 ⇒ √(x²)=|x|",
    "12345", "3.14159", "1,000,000", "0x1F 0b1010 1e-9", "x = 42 + 7 * 3", "٣٤٥ ½ ² Ⅻ",
    "12345678901234567890123456789012345678901234567890", "year 2024, pages 10-20",
    "def f(x):\n    return x * 2\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "#include <stdio.h>\nint main() { printf(\"hi\\n\"); }", "<div class=\"x\">&amp;</div>",
    "SELECT * FROM t WHERE a >= 10 AND b <> 'x';", "path/to/file.txt C:\\Users\\me",
    "https://example.com/a?b=c&d=e#f", "user@example.org", "a\tb\t\tc", "\t\tindented",
    "line1\nline2\r\nline3\rline4", "\n\n\n", "para one.\n\npara two.", "   ", " ", "\t", "a   b",
    "trailing spaces   ", "   leading", "mixed \t \n whitespace", "\u00a0nbsp\u3000ideographic\u2003em",
    "!!!???...", "--- *** ___ ===", "((()))[[]]{{}}", "a...b", "“smart quotes” ‘and’ «guillemets»",
    "mixedCASE camelCase snake_case kebab-case", "MiXeD ScRiPt: abc абв αβγ 123",
    "<|im_start|>user\nhi<|im_end|>", "<|endoftext|>text after", "x<repo_name>y<file_sep>",
    "zero\u200bwidth", "control\x01\x02\x03chars", "bell\x07 and escape\x1b[0m", "\x04\x06 drop",
    "aaa aaaaa baaab zzzz xaaax", "",
]
INVALID = [
    b"\xff\xfe invalid lead bytes", b"\x80\x81 stray continuation", b"truncated \xe2\x82",
    b"truncated 4-byte \xf0\x9f\x98", b"overlong \xc0\xaf and \xe0\x80\xaf", b"surrogate \xed\xa0\x80",
    b"mix \xe2\x82\xe2\x82\xac euro", b"abc\xc3", b"\xc3(", b"\xa0\xa1 bytes", b"9\xb0C", b"\xf4\x90\x80\x80 too big",
]


SPM_CORPUS = [
    "The quick brown fox jumps over the lazy dog while the other dogs sleep in the sun.",
    "It was the best of times, it was the worst of times, it was the age of wisdom.",
    "Tokenizers split text into pieces; the model sees only the ids of those pieces.",
    "Les élèves étudient la géographie et l'histoire à l'école près de la forêt.",
    "Die Straße führt über die Brücke zum Bahnhof, wo die Züge pünktlich fahren.",
    "Numbers like 1024, 2048 and 4096 appear in code: for i in range(10): print(i)",
    "Repeats make ties between equal merges: aa aaaa aaaaaa, zzz zz, Mississippi bookkeeper.",
]


def spm_vocab():
    """A Llama-2-style vocabulary: (pieces, scores, token types)."""
    from tokenizers import normalizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(SPM_CORPUS * 20, trainer)
    trained = [p for p, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]) if p not in ("<unk>", "<s>", "</s>")]
    pieces = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + trained
    types = [2, 3, 3] + [6] * 256 + [1] * len(trained)
    scores = [0.0] * 259 + [-float(i) for i in range(len(trained))]
    return pieces, scores, types


def spm_reference(pieces, scores, types):
    from tokenizers import normalizers
    normal = {p: i for i, p in enumerate(pieces) if types[i] == 1}
    merges = []
    for left in normal:
        for right in normal:
            if left + right in normal:
                merges.append((-scores[normal[left + right]], normal[left], normal[right], left, right))
    merges.sort()
    bpe = models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[(m[3], m[4]) for m in merges],
                     unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    return tok


def main():
    path = subprocess.check_output([sys.executable, "scripts/find_model.py"]).decode().strip()
    tokens, types, merges = read_vocab(path)
    b2u = bytes_to_unicode()
    toks = {pre: build(tokens, types, merges, pre, False) for pre in ("smollm", "gpt2", "llama3")}
    special = build(tokens, types, merges, "smollm", True)
    cases = []
    for data in [c.encode("utf-8") for c in CASES] + INVALID:
        case = {"hex": data.hex()}
        try:
            text = data.decode("utf-8")
            case["text"] = text
        except UnicodeDecodeError:
            text = None
        for pre, tok in toks.items():
            ids, pieces = encode_bytes(tok, data, b2u)
            if text is not None:
                assert ids == tok.encode(text).ids, (pre, text)
            case[pre] = ids
            case[pre + "_pieces"] = pieces
        if text is not None:
            case["special"] = special.encode(text).ids
        cases.append(case)
    pieces, scores, types = spm_vocab()
    spm = spm_reference(pieces, scores, types)
    spm_cases = [{"hex": c.encode("utf-8").hex(), "text": c, "ids": spm.encode(c).ids}
                 for c in CASES + SPM_CORPUS if c]
    out = {"model": os.path.basename(path), "generator": "scripts/make_tokenizer_vectors.py",
           "cases": cases,
           "spm": {"tokens": pieces, "scores": scores, "token_type": types, "cases": spm_cases}}
    with open("tests/model/data/tokenizer_vectors.json", "w") as f:
        json.dump(out, f, ensure_ascii=True, indent=0)
    print("%d cases -> tests/model/data/tokenizer_vectors.json" % len(cases))


if __name__ == "__main__":
    main()
