// The regex splitting byte-level BPE applies before merging, written by hand: std::regex has
// no \p{L}/\p{N} and the engines that do would be a dependency for three fixed patterns.
// Private to saap_model (and its tests).
#pragma once
#include <string>
#include <vector>

namespace saap {

enum class PreTokenizer : int {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kGpt2,
  // Every \p{N} split off on its own first, then kGpt2 on the rest (HF: Digits(individual_digits)
  // then ByteLevel; llama.cpp's "smollm"/"starcoder"/"refact" pre types).
  kDigitsGpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
  // \s*[\r\n]+|\s+(?!\S)|\s+
  kLlama3,
};

// The splitter for a GGUF tokenizer.ggml.pre value; Unsupported naming it when unknown.
PreTokenizer pre_tokenizer_from_name(const std::string& pre);

// The pieces of text, in order; their concatenation is text, byte for byte.
std::vector<std::string> pre_tokenize(const std::string& text, PreTokenizer kind);

}  // namespace saap
