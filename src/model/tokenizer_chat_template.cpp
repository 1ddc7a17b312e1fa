// Chat templates. GGUF files carry a Jinja template; saap does not embed a Jinja engine but
// recognises the ChatML family (SmolLM2, Qwen, ...) and reproduces what its template renders,
// including a default system prompt the template inserts when the conversation has none; and
// Gemma's turns (tokenizer_chat_gemma.cpp; the Gemma-3 GGUF carries no template).
#include <algorithm>
#include <string>
#include <vector>

#include "saap/core/error.h"
#include "saap/model/tokenizer.h"
#include "tokenizer_chat_gemma.h"

namespace saap {
namespace {

const std::string kImStart = "<|im_start|>";
const std::string kImEnd = "<|im_end|>";

// The value of the Jinja string literal that encloses position `at` of the template, with its
// escapes resolved; empty when `at` is not inside a '...' or "..." literal.
std::string enclosing_literal(const std::string& tpl, size_t at) {
  char quote = 0;
  size_t open = std::string::npos;
  for (size_t i = 0; i < at; ++i) {
    char c = tpl[i];
    if (quote) {
      if (c == '\\') ++i;
      else if (c == quote) quote = 0;
    } else if (c == '\'' || c == '"') {
      quote = c;
      open = i;
    }
  }
  if (!quote) return "";
  std::string value;
  for (size_t i = open + 1; i < tpl.size() && tpl[i] != quote; ++i) {
    char c = tpl[i];
    if (c == '\\' && i + 1 < tpl.size()) {
      char e = tpl[++i];
      value += e == 'n' ? '\n' : e == 't' ? '\t' : e;
    } else {
      value += c;
    }
  }
  return value;
}

// SmolLM2-Instruct's template holds the literal
// '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...<|im_end|>\n' behind
// `messages[0]['role'] != 'system'`: a ChatML template with a literal system turn supplies a
// default. Returns whether one was found.
bool default_system_prompt(const std::string& tpl, std::string* prompt) {
  const std::string head = kImStart + "system";
  for (size_t at = tpl.find(head); at != std::string::npos; at = tpl.find(head, at + 1)) {
    std::string literal = enclosing_literal(tpl, at);
    size_t begin = literal.find(head + "\n");
    size_t end = literal.find(kImEnd);
    if (begin == std::string::npos || end == std::string::npos || end < begin) continue;
    begin += head.size() + 1;
    *prompt = literal.substr(begin, end - begin);
    return true;
  }
  return false;
}

}  // namespace

// The rendered conversation as runs of text, each either a control token the template inserts
// (<|im_start|>, <|im_end|>) or text: roles, newlines, the default system prompt, and the
// messages' content, which is the user's and may hold anything, control-token text included.
std::vector<Tokenizer::ChatRun> Tokenizer::render_chat(const std::vector<ChatMessage>& messages,
                                                       bool add_generation_prompt) const {
  if (is_gemma_chat(chat_template_, piece_to_id_.count("<start_of_turn>") != 0)) {
    std::vector<ChatRun> runs;
    for (GemmaChatRun& run : render_gemma_chat(messages, add_generation_prompt))
      runs.push_back({std::move(run.text), run.control});
    return runs;
  }
  SAAP_CHECK_FMT(chat_template_.empty() || chat_template_.find(kImStart) != std::string::npos, Unsupported,
                 "tokenizer.chat_template is not ChatML (the only family saap renders); it starts '%.60s'",
                 chat_template_.c_str());
  std::vector<ChatRun> runs;
  auto turn = [&](const std::string& role, const std::string& content, bool close) {
    runs.push_back({kImStart, true});
    runs.push_back({role + "\n" + content, false});
    if (close) {
      runs.push_back({kImEnd, true});
      runs.push_back({"\n", false});
    }
  };
  std::string system;
  if (!messages.empty() && messages[0].role != "system" && default_system_prompt(chat_template_, &system))
    turn("system", system, true);
  for (const ChatMessage& m : messages) turn(m.role, m.content, true);
  if (add_generation_prompt) turn("assistant", "", false);
  return runs;
}

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  std::string out;
  for (const ChatRun& run : render_chat(messages, add_generation_prompt)) out += run.text;
  return out;
}

std::vector<int32_t> Tokenizer::encode_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                            bool add_bos) const {
  std::vector<int32_t> out;
  if (add_bos && add_bos_ && bos_ >= 0) out.push_back(bos_);
  // Text between two control tokens is encoded as one run, exactly as encode(rendered, ..., true)
  // would split it, so a conversation without control-token text in its content encodes to the
  // same ids either way; only the runs the template inserts can become control tokens.
  std::string text;
  for (const ChatRun& run : render_chat(messages, add_generation_prompt)) {
    const auto found = run.control ? piece_to_id_.find(run.text) : piece_to_id_.end();
    const bool special = found != piece_to_id_.end() &&
                         std::find(special_ids_.begin(), special_ids_.end(), found->second) != special_ids_.end();
    if (!special) {  // content, or a vocabulary without ChatML's tokens: text, as encode would see it
      text += run.text;
      continue;
    }
    encode_text(text, true, out);
    text.clear();
    out.push_back(found->second);
  }
  encode_text(text, true, out);
  return out;
}

}  // namespace saap
