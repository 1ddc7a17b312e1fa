// libFuzzer target for the chat template: the template string a GGUF carries (saap reads the
// ChatML family out of the Jinja text, default system prompt included) and the messages rendered
// with it. The input is split at NUL bytes: the template, then role and content pairs; the
// vocabulary is a tiny byte-level one built in memory (tests/fuzz/tiny_gguf.h), so every byte
// has a token. Rendering must succeed or raise Unsupported (a template that is not ChatML); a
// rendered conversation must hold every message in order and round-trip through encode (special
// tokens on) and decode.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "fuzz/tiny_gguf.h"
#include "saap/core/error.h"
#include "saap/model/gguf.h"
#include "saap/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> parts(1);
  for (size_t i = 0; i < size; ++i) {
    if (data[i] == 0) parts.emplace_back();
    else parts.back() += char(data[i]);
  }
  saap::test_data::TinyGGUF g = saap::test_data::tiny_chatml_vocabulary();
  g.add_string("tokenizer.chat_template", parts[0]);
  const std::vector<uint8_t> file = g.bytes();
  const saap::Tokenizer tok = saap::Tokenizer::from_gguf(saap::GGUFFile::parse(file.data(), file.size()));

  std::vector<saap::ChatMessage> messages;
  for (size_t i = 1; i + 1 < parts.size(); i += 2) messages.push_back({parts[i], parts[i + 1]});
  const bool generation_prompt = parts.size() % 2 == 0;
  std::string rendered;
  try {
    rendered = tok.apply_chat_template(messages, generation_prompt);
  } catch (const saap::Error& e) {
    if (e.kind() != saap::ErrorKind::Unsupported) std::abort();
    return 0;
  }
  size_t at = 0;
  for (const saap::ChatMessage& m : messages) {
    at = rendered.find(m.role + "\n" + m.content, at);
    if (at == std::string::npos) std::abort();
    at += m.role.size() + 1 + m.content.size();
  }
  if (tok.decode(tok.encode(rendered, /*add_bos=*/false, /*parse_special=*/true)) != rendered) std::abort();
  return 0;
}
