// Gemma's chat format (Gemma 2 and 3), as the chat_template of google/gemma-3-*-it renders it.
// Internal to src/model.
#pragma once
#include <string>
#include <vector>

#include "saap/model/tokenizer.h"

namespace saap {

// One run of the rendered conversation: a control token the template inserts (<start_of_turn>,
// <end_of_turn>) or text (roles, newlines, the messages' content).
struct GemmaChatRun {
  std::string text;
  bool control = false;
};

// BOS is not included (the tokenizer adds it). Turns are "<start_of_turn>{user|model}\n" +
// content (trimmed, as the template's `| trim`) + "<end_of_turn>\n"; a leading system message
// becomes a prefix of the first user turn (content + "\n\n"), as Gemma has no system role; the
// generation prompt is "<start_of_turn>model\n". Roles after the system message must alternate
// user/assistant starting with user (InvalidArgument otherwise, as the template raises).
std::vector<GemmaChatRun> render_gemma_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt);

// True when a vocabulary/template pair is Gemma's: the vocabulary has <start_of_turn> and the
// GGUF carries no template or one that uses it.
bool is_gemma_chat(const std::string& chat_template, bool vocabulary_has_start_of_turn);

}  // namespace saap
