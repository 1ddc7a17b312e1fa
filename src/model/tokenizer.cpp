// Construction from GGUF metadata, encode (special-token split, pre-tokenizer, BPE) and decode.
#include "saap/model/tokenizer.h"

#include <algorithm>
#include <queue>

#include "saap/core/error.h"
#include "saap/model/gguf.h"
#include "tokenizer_pretokenizer.h"
#include "unicode.h"

namespace saap {
namespace {

constexpr int32_t kTypeNormal = 1, kTypeUnknown = 2, kTypeControl = 3, kTypeUserDefined = 4,
                  kTypeByte = 6;

// GPT-2's reversible byte -> printable code point map: printable Latin-1 bytes stand for
// themselves, the other 68 are shifted to U+0100.. so that no piece holds a space or control.
struct ByteLevel {
  uint32_t byte_to_cp[256];
  std::unordered_map<uint32_t, uint8_t> cp_to_byte;
  ByteLevel() {
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      byte_to_cp[b] = printable ? b : next++;
      cp_to_byte[byte_to_cp[b]] = uint8_t(b);
    }
  }
};
const ByteLevel& byte_level() {
  static const ByteLevel table;
  return table;
}

const std::string kSpmSpace = "\xE2\x96\x81";  // U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's space

void replace_all(std::string& s, const std::string& from, const std::string& to) {
  std::string out;
  out.reserve(s.size());
  size_t at = 0;
  for (size_t hit; (hit = s.find(from, at)) != std::string::npos; at = hit + from.size())
    out.append(s, at, hit - at).append(to);
  out.append(s, at, std::string::npos);
  s.swap(out);
}

// "<0x4A>" -> 0x4A; -1 when the piece is not of that form.
int parse_byte_piece(const std::string& piece) {
  if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
  int v = 0;
  for (int k = 3; k < 5; ++k) {
    char c = piece[k];
    int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'A' && c <= 'F') ? c - 'A' + 10
          : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

// What a vocabulary array must hold: token_type ids are integers, scores floats, tokens and merges
// strings. A float token_type array (or an integer scores array) would leave the vector the
// caller reads empty, so the element type is checked, not only "a number".
enum class Elements { Strings, Integers, Floats };

const GGUFValue& array_of(const GGUFFile& file, const std::string& key, Elements want_elements, size_t want) {
  const GGUFValue& v = file.get(key);  // BadFile naming the key when missing
  SAAP_CHECK_FMT(v.type == GGUFValueType::ARRAY, BadFile, "GGUF key '%s' must be an array, got type %u",
                 key.c_str(), unsigned(v.type));
  const Elements got = v.array_type == GGUFValueType::STRING ? Elements::Strings
                       : v.array_type == GGUFValueType::FLOAT32 || v.array_type == GGUFValueType::FLOAT64
                           ? Elements::Floats
                           : Elements::Integers;
  static const char* const kNames[] = {"strings", "integers", "floats"};
  SAAP_CHECK_FMT(got == want_elements, BadFile, "GGUF key '%s' must be an array of %s, got element type %u",
                 key.c_str(), kNames[int(want_elements)], unsigned(v.array_type));
  const size_t n = got == Elements::Strings ? v.strings.size() : got == Elements::Floats ? v.floats.size() : v.ints.size();
  SAAP_CHECK_FMT(want == 0 || n == want, BadFile, "GGUF key '%s' has %zu entries, the vocabulary %zu",
                 key.c_str(), n, want);
  return v;
}

int32_t token_id(const GGUFFile& file, const std::string& key, int64_t fallback, size_t n_vocab) {
  int64_t id = file.get_int(key, fallback);
  SAAP_CHECK_FMT(id >= -1 && id < int64_t(n_vocab), BadFile,
                 "GGUF key '%s' = %lld is outside the vocabulary of %zu tokens", key.c_str(),
                 (long long)id, n_vocab);
  return int32_t(id);
}

}  // namespace

Tokenizer Tokenizer::from_gguf(const GGUFFile& file) {
  Tokenizer t;
  t.model_ = file.get_string("tokenizer.ggml.model");
  SAAP_CHECK_FMT(t.model_ == "gpt2" || t.model_ == "llama", BadFile,
                 "GGUF key 'tokenizer.ggml.model' = '%s': saap reads 'gpt2' (byte-level BPE) and "
                 "'llama' (SentencePiece BPE) vocabularies", t.model_.c_str());

  t.pieces_ = array_of(file, "tokenizer.ggml.tokens", Elements::Strings, 0).strings;
  const size_t n = t.pieces_.size();
  SAAP_CHECK_FMT(n > 0 && n < (size_t(1) << 31), BadFile,
                 "GGUF key 'tokenizer.ggml.tokens' holds %zu tokens", n);
  t.token_types_.assign(n, kTypeNormal);
  if (file.has("tokenizer.ggml.token_type")) {
    const auto& types = array_of(file, "tokenizer.ggml.token_type", Elements::Integers, n).ints;
    t.token_types_.assign(types.begin(), types.end());
  }
  t.scores_.assign(n, 0.0f);
  if (file.has("tokenizer.ggml.scores")) {
    const auto& scores = array_of(file, "tokenizer.ggml.scores", Elements::Floats, n).floats;
    t.scores_.assign(scores.begin(), scores.end());
  }
  t.piece_to_id_.reserve(n);
  for (size_t id = 0; id < n; ++id) t.piece_to_id_.emplace(t.pieces_[id], int32_t(id));

  if (!t.is_spm()) {
    // GGUFs converted before llama.cpp recorded the pre-tokenizer meant plain GPT-2.
    t.pre_ = file.has("tokenizer.ggml.pre") ? file.get_string("tokenizer.ggml.pre") : "gpt2";
    t.pre_kind_ = pre_tokenizer_from_name(t.pre_);
    const auto& merges = array_of(file, "tokenizer.ggml.merges", Elements::Strings, 0).strings;
    t.merges_.reserve(merges.size());
    for (size_t rank = 0; rank < merges.size(); ++rank) {
      const std::string& m = merges[rank];
      // Byte-level pieces never hold a space, so the first one separates the pair.
      size_t sp = m.find(' ', 1);
      SAAP_CHECK_FMT(sp != std::string::npos, BadFile,
                     "GGUF key 'tokenizer.ggml.merges'[%zu] = '%s' is not 'left right'", rank, m.c_str());
      auto l = t.piece_to_id_.find(m.substr(0, sp));
      auto r = t.piece_to_id_.find(m.substr(sp + 1));
      auto merged = t.piece_to_id_.find(m.substr(0, sp) + m.substr(sp + 1));
      // A merge producing a piece outside the vocabulary can never be emitted; skip it.
      if (l == t.piece_to_id_.end() || r == t.piece_to_id_.end() || merged == t.piece_to_id_.end()) continue;
      uint64_t key = (uint64_t(uint32_t(l->second)) << 32) | uint32_t(r->second);
      t.merges_.emplace(key, std::make_pair(int32_t(rank), merged->second));
    }
  }

  // What each id decodes to, computed once: decode and streaming then only concatenate.
  const ByteLevel& bl = byte_level();
  std::fill(std::begin(t.byte_ids_), std::end(t.byte_ids_), -1);
  t.bytes_.resize(n);
  for (size_t id = 0; id < n; ++id) {
    const std::string& piece = t.pieces_[id];
    int32_t type = t.token_types_[id];
    std::string& out = t.bytes_[id];
    if (type == kTypeControl || type == kTypeUserDefined || type == kTypeUnknown) {
      out = piece;
    } else if (t.is_spm()) {
      int b = type == kTypeByte ? parse_byte_piece(piece) : -1;
      if (b >= 0) {
        out = std::string(1, char(b));
        if (t.byte_ids_[b] < 0) t.byte_ids_[b] = int32_t(id);
      } else {
        out = piece;
        replace_all(out, kSpmSpace, " ");
      }
    } else {
      for (const unicode::Codepoint& c : unicode::decode_utf8(piece)) {
        auto it = bl.cp_to_byte.find(c.cp);
        if (it != bl.cp_to_byte.end()) out += char(it->second);
        else out.append(piece, c.offset, c.size);  // not a byte-level character: keep it
      }
    }
  }
  if (!t.is_spm()) {
    for (int b = 0; b < 256; ++b) {
      std::string piece;
      unicode::append_utf8(piece, bl.byte_to_cp[b]);
      auto it = t.piece_to_id_.find(piece);
      if (it != t.piece_to_id_.end()) t.byte_ids_[b] = it->second;
    }
  }

  for (size_t id = 0; id < n; ++id)
    if ((t.token_types_[id] == kTypeControl || t.token_types_[id] == kTypeUserDefined) && !t.pieces_[id].empty())
      t.special_ids_.push_back(int32_t(id));
  // Longest first, so that a special token which is a prefix of another never wins.
  std::stable_sort(t.special_ids_.begin(), t.special_ids_.end(), [&](int32_t a, int32_t b) {
    return t.pieces_[a].size() > t.pieces_[b].size();
  });
  for (int32_t id : t.special_ids_)
    if (t.token_types_[id] == kTypeUserDefined) t.user_defined_ids_.push_back(id);

  t.bos_ = token_id(file, "tokenizer.ggml.bos_token_id", -1, n);
  t.eos_ = token_id(file, "tokenizer.ggml.eos_token_id", -1, n);
  t.eot_ = token_id(file, "tokenizer.ggml.eot_token_id", -1, n);
  t.unk_ = token_id(file, "tokenizer.ggml.unknown_token_id", -1, n);
  int32_t eom = token_id(file, "tokenizer.ggml.eom_token_id", -1, n);
  // llama.cpp's defaults: SentencePiece vocabularies start with BOS and a space, GPT-2 ones not.
  t.add_bos_ = file.get_int("tokenizer.ggml.add_bos_token", t.is_spm() ? 1 : 0) != 0;
  t.add_space_prefix_ = t.is_spm() && file.get_int("tokenizer.ggml.add_space_prefix", 1) != 0;
  if (file.has("tokenizer.chat_template")) t.chat_template_ = file.get_string("tokenizer.chat_template");

  // End of generation: the declared ids plus the control tokens chat models end turns with
  // (SmolLM2-Instruct declares <|im_end|> as EOS but its base model emits <|endoftext|>).
  for (int32_t id : {t.eos_, t.eot_, eom})
    if (id >= 0) t.eog_ids_.push_back(id);
  static const char* const kEndTurn[] = {"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>",
                                         "<end_of_turn>", "<|end|>"};
  for (const char* text : kEndTurn) {
    auto it = t.piece_to_id_.find(text);
    if (it != t.piece_to_id_.end() && t.token_types_[it->second] == kTypeControl)
      t.eog_ids_.push_back(it->second);
  }
  return t;
}

bool Tokenizer::is_end_of_generation(int32_t id) const {
  return std::find(eog_ids_.begin(), eog_ids_.end(), id) != eog_ids_.end();
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool add_bos, bool parse_special) const {
  // Offsets inside the tokenizer are 32-bit.
  SAAP_CHECK_FMT(text.size() < (size_t(1) << 32), InvalidArgument,
                 "text of %zu bytes is too long to encode at once (split it below 4 GiB)", text.size());
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && add_bos_ && bos_ >= 0) out.push_back(bos_);
  if (!parse_special || special_ids_.empty()) {
    encode_text(text, true, out);
    return out;
  }
  // Split at special tokens, leftmost first and longest at one position (as the HF added-token
  // matcher does); the text between is tokenized normally.
  bool present[256] = {};
  for (int32_t id : special_ids_) present[uint8_t(pieces_[id][0])] = true;
  size_t start = 0;
  bool after_special = true;
  for (size_t i = 0; i < text.size();) {
    int32_t hit = -1;
    if (present[uint8_t(text[i])]) {
      for (int32_t id : special_ids_) {
        if (text.compare(i, pieces_[id].size(), pieces_[id]) == 0) {
          hit = id;
          break;
        }
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    if (i > start) {
      encode_text(text.substr(start, i - start), after_special, out);
    }
    out.push_back(hit);
    after_special = true;
    i += pieces_[hit].size();
    start = i;
  }
  if (start < text.size()) encode_text(text.substr(start), after_special, out);
  return out;
}

void Tokenizer::encode_text(const std::string& text, bool after_special, std::vector<int32_t>& out) const {
  // User-defined tokens (Gemma's runs of newlines, spaces and tabs) are matched whole in any text,
  // special tokens parsed or not, as llama.cpp (tokenizer_st_partition) and HF (non-special added
  // tokens) do; the text between them goes to the vocabulary's algorithm.
  bool present[256] = {};  // first bytes of user-defined tokens
  for (int32_t id : user_defined_ids_) present[uint8_t(pieces_[id][0])] = true;
  size_t start = 0;
  for (size_t i = 0; !user_defined_ids_.empty() && i < text.size();) {
    int32_t hit = -1;
    for (size_t k = 0; present[uint8_t(text[i])] && k < user_defined_ids_.size(); ++k) {  // longest first
      const int32_t id = user_defined_ids_[k];
      if (text.compare(i, pieces_[id].size(), pieces_[id]) == 0) {
        hit = id;
        break;
      }
    }
    if (hit < 0) {
      ++i;
      continue;
    }
    encode_model_text(text.substr(start, i - start), after_special, out);
    out.push_back(hit);
    after_special = true;
    i += pieces_[hit].size();
    start = i;
  }
  encode_model_text(start == 0 ? text : text.substr(start), after_special, out);
}

void Tokenizer::encode_model_text(const std::string& text, bool after_special, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (is_spm()) {
    // llama.cpp's rule: a space goes before text at the start and after each special token.
    std::string s = (add_space_prefix_ && after_special) ? " " + text : text;
    replace_all(s, " ", kSpmSpace);
    encode_spm(s, out);
    return;
  }
  for (const std::string& piece : pre_tokenize(text, pre_kind_)) encode_bpe_piece(piece, out);
}

void Tokenizer::encode_bpe_piece(const std::string& piece, std::vector<int32_t>& out) const {
  struct Symbol {
    int32_t id;
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  sym.reserve(piece.size());
  for (unsigned char b : piece) {
    if (byte_ids_[b] < 0) continue;  // no token for this byte: dropped before merging, as HF does
    int32_t k = int32_t(sym.size());
    sym.push_back({byte_ids_[b], k - 1, k + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  // Lowest merge rank first, leftmost among equal ranks; stale entries (a side already merged
  // away or grown) are recognised by their ids and skipped.
  struct Candidate {
    int32_t rank, left, right, left_id, right_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    auto it = merges_.find((uint64_t(uint32_t(sym[l].id)) << 32) | uint32_t(sym[r].id));
    if (it != merges_.end()) queue.push({it->second.first, l, r, sym[l].id, sym[r].id});
  };
  for (int32_t k = 0; k + 1 < int32_t(sym.size()); ++k) consider(k, k + 1);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    if (sym[c.left].id != c.left_id || sym[c.right].id != c.right_id || sym[c.left].next != c.right) continue;
    auto it = merges_.find((uint64_t(uint32_t(c.left_id)) << 32) | uint32_t(c.right_id));
    sym[c.left].id = it->second.second;
    sym[c.left].next = sym[c.right].next;
    if (sym[c.right].next >= 0) sym[sym[c.right].next].prev = c.left;
    sym[c.right].id = -1;  // dead
    consider(sym[c.left].prev, c.left);
    consider(c.left, sym[c.left].next);
  }
  for (int32_t k = 0; k >= 0; k = sym[k].next) out.push_back(sym[k].id);
}

void Tokenizer::encode_spm(const std::string& text, std::vector<int32_t>& out) const {
  // SentencePiece BPE as llama.cpp runs it: start from characters and repeatedly merge the
  // adjacent pair whose concatenation is the highest-scoring vocabulary piece (leftmost on ties).
  struct Symbol {
    uint32_t offset, size;
    int32_t prev, next;
  };
  std::vector<Symbol> sym;
  for (const unicode::Codepoint& c : unicode::decode_utf8(text)) {
    int32_t k = int32_t(sym.size());
    sym.push_back({c.offset, c.size, k - 1, k + 1});
  }
  if (sym.empty()) return;
  sym.back().next = -1;
  struct Candidate {
    float score;
    int32_t left, right;
    uint32_t size;
    bool operator<(const Candidate& o) const { return score != o.score ? score < o.score : left > o.left; }
  };
  std::priority_queue<Candidate> queue;
  auto consider = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].size + sym[r].size;
    auto it = piece_to_id_.find(text.substr(sym[l].offset, size));
    if (it != piece_to_id_.end()) queue.push({scores_[it->second], l, r, size});
  };
  for (int32_t k = 0; k + 1 < int32_t(sym.size()); ++k) consider(k, k + 1);
  while (!queue.empty()) {
    Candidate c = queue.top();
    queue.pop();
    if (sym[c.left].size == 0 || sym[c.right].size == 0 || sym[c.left].next != c.right ||
        sym[c.left].size + sym[c.right].size != c.size)
      continue;
    sym[c.left].size = c.size;
    sym[c.left].next = sym[c.right].next;
    if (sym[c.right].next >= 0) sym[sym[c.right].next].prev = c.left;
    sym[c.right].size = 0;  // dead
    consider(sym[c.left].prev, c.left);
    consider(c.left, sym[c.left].next);
  }
  for (int32_t k = 0; k >= 0; k = sym[k].next) {
    std::string s = text.substr(sym[k].offset, sym[k].size);
    auto it = piece_to_id_.find(s);
    if (it != piece_to_id_.end()) {
      out.push_back(it->second);
      continue;
    }
    // Byte fallback: a character outside the vocabulary becomes its <0xXX> tokens.
    for (unsigned char b : s) {
      if (byte_ids_[b] >= 0) out.push_back(byte_ids_[b]);
      else if (unk_ >= 0) out.push_back(unk_);
    }
  }
}

std::string Tokenizer::token_bytes(int32_t id) const {
  SAAP_CHECK_FMT(id >= 0 && id < vocab_size(), InvalidArgument, "token id %d is outside the vocabulary of %d",
                 id, vocab_size());
  return bytes_[id];
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  for (size_t k = 0; k < ids.size(); ++k) {
    int32_t id = ids[k];
    SAAP_CHECK_FMT(id >= 0 && id < vocab_size(), InvalidArgument,
                   "ids[%zu] = %d is outside the vocabulary of %d", k, id, vocab_size());
    out += bytes_[id];
  }
  // The space encode put before the text (SentencePiece) is not part of it.
  if (add_space_prefix_ && !out.empty() && out[0] == ' ' && !ids.empty() &&
      token_types_[ids[0]] != kTypeControl && token_types_[ids[0]] != kTypeUserDefined)
    out.erase(0, 1);
  return out;
}

}  // namespace saap
