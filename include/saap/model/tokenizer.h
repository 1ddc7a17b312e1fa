// Tokenizer built from a GGUF vocabulary: byte-level BPE with the GPT-2 / Llama-3 style
// pre-tokenizer ("gpt2", SmolLM2's "smollm"/"llama-bpe" models) and SentencePiece-style BPE
// ("llama", the Llama 2 family); special tokens; chat templates (ChatML for SmolLM2).
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace saap {

class GGUFFile;

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

class Tokenizer {
 public:
  static Tokenizer from_gguf(const GGUFFile& file);

  // Text to ids. parse_special: "<|im_start|>" etc. in the text become their special ids.
  // add_bos: prepend BOS when the vocabulary asks for it (tokenizer.ggml.add_bos_token).
  std::vector<int32_t> encode(const std::string& text, bool add_bos = false, bool parse_special = false) const;
  // Ids to text; bytes of incomplete UTF-8 sequences are kept as they are.
  std::string decode(const std::vector<int32_t>& ids) const;
  // The raw bytes one token stands for (for streaming output).
  std::string token_bytes(int32_t id) const;

  int32_t vocab_size() const { return int32_t(pieces_.size()); }
  int32_t bos() const { return bos_; }
  int32_t eos() const { return eos_; }
  bool is_end_of_generation(int32_t id) const;
  // The model's chat template applied to messages (ChatML when the GGUF carries ChatML or none).
  std::string apply_chat_template(const std::vector<ChatMessage>& messages, bool add_generation_prompt) const;

 private:
  friend class TokenizerBuilder;
  std::string model_;                    // tokenizer.ggml.model
  std::string pre_;                      // tokenizer.ggml.pre
  std::vector<std::string> pieces_;      // id -> piece as stored in the vocabulary
  std::vector<int32_t> token_types_;     // id -> 1 normal, 3 control, 6 byte, ...
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" -> rank
  std::vector<int32_t> special_ids_;     // control/user-defined tokens matched verbatim
  int32_t bos_ = -1, eos_ = -1, eot_ = -1;
  bool add_bos_ = false;
  std::string chat_template_;
};

}  // namespace saap
