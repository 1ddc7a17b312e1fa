#include "tokenizer_chat_gemma.h"

#include "saap/core/error.h"

namespace saap {
namespace {

const char* const kStartOfTurn = "<start_of_turn>";
const char* const kEndOfTurn = "<end_of_turn>";

// Jinja's `trim`: strips leading and trailing whitespace.
std::string trim(const std::string& s) {
  const char* space = " \t\n\r\f\v";
  const size_t begin = s.find_first_not_of(space);
  if (begin == std::string::npos) return "";
  return s.substr(begin, s.find_last_not_of(space) - begin + 1);
}

}  // namespace

bool is_gemma_chat(const std::string& chat_template, bool vocabulary_has_start_of_turn) {
  return vocabulary_has_start_of_turn &&
         (chat_template.empty() || chat_template.find(kStartOfTurn) != std::string::npos);
}

std::vector<GemmaChatRun> render_gemma_chat(const std::vector<ChatMessage>& messages, bool add_generation_prompt) {
  std::vector<GemmaChatRun> runs;
  size_t first = 0;
  std::string prefix;  // the system message, folded into the first user turn
  if (!messages.empty() && messages[0].role == "system") {
    prefix = messages[0].content + "\n\n";
    first = 1;
  }
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool expect_user = (i - first) % 2 == 0;
    SAAP_CHECK_FMT(m.role == (expect_user ? "user" : "assistant"), InvalidArgument,
                   "chat message %zu has role '%s': Gemma's roles must alternate user/assistant after an optional "
                   "system message", i, m.role.c_str());
    runs.push_back({kStartOfTurn, true});
    runs.push_back({(expect_user ? "user\n" : "model\n") + (i == first ? prefix : std::string()) + trim(m.content),
                    false});
    runs.push_back({kEndOfTurn, true});
    runs.push_back({"\n", false});
  }
  if (add_generation_prompt) {
    runs.push_back({kStartOfTurn, true});
    runs.push_back({"model\n", false});
  }
  return runs;
}

}  // namespace saap
