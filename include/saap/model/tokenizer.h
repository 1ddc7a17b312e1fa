// Tokenizer built from a GGUF vocabulary: byte-level BPE with the GPT-2 / Llama-3 style
// pre-tokenizer ("gpt2", SmolLM2's "smollm"/"llama-bpe" models) and SentencePiece-style BPE
// ("llama", the Llama 2 family); special tokens; chat templates (ChatML for SmolLM2).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace saap {

class GGUFFile;
enum class PreTokenizer : int;  // src/model/tokenizer_pretokenizer.h

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GGUFFile& file);

  // Text to ids. parse_special: "<|im_start|>" etc. in the text become their special ids.
  // add_bos: prepend BOS when the vocabulary asks for it (tokenizer.ggml.add_bos_token).
  // Any byte string is accepted (invalid UTF-8 included). Bytes a byte-level vocabulary has no
  // token for (SmolLM2 lacks 21 of the 256, e.g. 0x04, 0xC0, 0xFF) are dropped, as the HF
  // tokenizers and llama.cpp do; every other byte string s has decode(encode(s)) == s.
  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool parse_special = false) const;
  // Ids to text (special tokens as their text); bytes of incomplete UTF-8 sequences are kept
  // as they are. InvalidArgument naming the position of an id outside the vocabulary.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The raw bytes one token stands for (for streaming output).
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const { return int32_t(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool is_end_of_generation(int32_t id) const;
  // The model's chat template applied to messages (ChatML when the GGUF carries ChatML or none).
  std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  // The conversation as ids: only the control tokens the template inserts become control ids;
  // the messages' content is encoded with special tokens off, so a user who types
  // "<|im_end|><|im_start|>system" gets those characters as text, not a new turn (llama.cpp
  // treats user content the same way). Without such text in the content, this equals
  // encode(apply_chat_template(messages, ...), add_bos, /*parse_special=*/true).
  std::vector<int32_t> encode_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                   bool add_bos = true) const;

 private:
  friend class TokenizerBuilder;
  struct ChatRun {
    std::string text;
    bool control;  // a control token the template inserts, e.g. <|im_start|>
  };
  std::vector<ChatRun> render_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;
  bool is_spm() const { return model_ == "llama"; }
  void encode_text(const std::string& text, bool after_special, std::vector<int32_t>& out) const;
  void encode_model_text(const std::string& text, bool after_special, std::vector<int32_t>& out) const;
  void encode_bpe_piece(const std::string& piece, std::vector<int32_t>& out) const;
  void encode_spm(const std::string& text, std::vector<int32_t>& out) const;

  std::string model_;                    // tokenizer.ggml.model: "gpt2" or "llama"
  std::string pre_;                      // tokenizer.ggml.pre
  PreTokenizer pre_kind_{};
  std::vector<std::string> pieces_;      // id -> piece as stored in the vocabulary
  std::vector<std::string> bytes_;       // id -> the raw bytes it decodes to
  std::vector<int32_t> token_types_;     // id -> 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  // (left id << 32 | right id) -> (rank, merged id): the GPT-2 merge table keyed by ids, so the
  // BPE loop never builds strings.
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  int32_t byte_ids_[256] = {};            // byte -> its single-byte token (-1: the vocabulary lacks it)
  std::vector<int32_t> special_ids_;     // control/user-defined tokens matched verbatim, longest first
  std::vector<int32_t> user_defined_ids_;  // the user-defined ones: matched in any text, longest first
  std::vector<int32_t> eog_ids_;         // ids that end a generation
  int32_t bos_ = -1, eos_ = -1, eot_ = -1, unk_ = -1;
  bool add_bos_ = false;
  bool add_space_prefix_ = false;        // SentencePiece: a space before the text
  std::string chat_template_;
};

}  // namespace saap
