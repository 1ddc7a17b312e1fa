// Chat templates. GGUF files carry a Jinja template; saap does not embed a Jinja engine but
// recognises the ChatML family (SmolLM2, Qwen, ...) and reproduces what its template renders,
// including a default system prompt the template inserts when the conversation has none.
#include <string>

#include "saap/core/error.h"
#include "saap/model/tokenizer.h"

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

std::string Tokenizer::apply_chat_template(const std::vector<ChatMessage>& messages,
                                           bool add_generation_prompt) const {
  SAAP_CHECK_FMT(chat_template_.empty() || chat_template_.find(kImStart) != std::string::npos, Unsupported,
                 "tokenizer.chat_template is not ChatML (the only family saap renders); it starts '%.60s'",
                 chat_template_.c_str());
  std::string out;
  std::string system;
  if (!messages.empty() && messages[0].role != "system" && default_system_prompt(chat_template_, &system))
    out += kImStart + "system\n" + system + kImEnd + "\n";
  for (const ChatMessage& m : messages) out += kImStart + m.role + "\n" + m.content + kImEnd + "\n";
  if (add_generation_prompt) out += kImStart + "assistant\n";
  return out;
}

}  // namespace saap
