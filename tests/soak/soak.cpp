// saap_soak: long runs that unit tests cannot afford, for scripts/soak.sh (meant for the asan
// preset, where a leak, an overflow or UB ends the run with an error).
//
//   saap_soak generate --method M [--artifact A] [--lookup L] --tokens N
//       Prefills a passage of eval.txt and decodes greedily, never stopping at end-of-generation,
//       until the cache holds N tokens (the model's context length at most).
//   saap_soak chat --method M [--artifact A] [--lookup L] --turns T --reply-tokens R
//       A conversation on one session whose cache every turn extends: the user turn (a passage of
//       eval.txt) is prefilled on top of the cached history, then R reply tokens are decoded.
//       The conversation runs twice on the same session (reset between): the live heap after the
//       second must equal the first, or memory is not flat (exit 1).
//
// Prints one JSON object: phase, method, tokens, seconds, checkpoints of the live heap and the
// resident set, and the peak resident set (VmHWM).
//   saap_soak methods
//       Prints the registry's method names, one a line (what scripts/soak.sh loops over).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

// Under ASan the allocator reports the live heap itself; glibc's mallinfo2 otherwise.
#if defined(__SANITIZE_ADDRESS__)
#define SAAP_SOAK_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SAAP_SOAK_ASAN 1
#endif
#endif
#if defined(SAAP_SOAK_ASAN)
// From the sanitizer runtime (sanitizer/allocator_interface.h, which GCC does not install).
extern "C" size_t __sanitizer_get_current_allocated_bytes();
#else
#include <malloc.h>
#endif

#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/methods/registry.h"
#include "saap/model/llama.h"

namespace saap {
namespace {

using json = nlohmann::json;

// Bytes the program holds on the heap now: what a leak or unbounded growth moves.
double live_heap_mib() {
#if defined(SAAP_SOAK_ASAN)
  return double(__sanitizer_get_current_allocated_bytes()) / (1 << 20);
#else
  const struct mallinfo2 m = mallinfo2();
  return double(m.uordblks + m.hblkhd) / (1 << 20);
#endif
}

// A field of /proc/self/status in MiB ("VmRSS", "VmHWM").
double status_mib(const char* field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field, 0) == 0) return std::atof(line.c_str() + std::strlen(field) + 1) / 1024.0;
  return 0.0;
}

json checkpoint(int64_t tokens) {
  return {{"tokens", tokens}, {"live_heap_mib", live_heap_mib()}, {"rss_mib", status_mib("VmRSS")}};
}

struct Options {
  std::string phase;
  MethodSpec spec;
  int64_t tokens = 2048;
  int turns = 6, reply_tokens = 128;
};

Options parse(int argc, char** argv) {
  Options o;
  SAAP_CHECK_MSG(argc >= 2, InvalidArgument,
                 "usage: saap_soak methods | generate|chat --method M [--artifact A] [--lookup L] [--tokens N] "
                 "[--turns T] [--reply-tokens R]");
  o.phase = argv[1];
  SAAP_CHECK_FMT(o.phase == "generate" || o.phase == "chat", InvalidArgument,
                 "phase '%s': generate or chat expected", o.phase.c_str());
  for (int i = 2; i < argc; i += 2) {
    const std::string key = argv[i];
    SAAP_CHECK_FMT(i + 1 < argc, InvalidArgument, "%s needs a value", key.c_str());
    const char* v = argv[i + 1];
    if (key == "--method") o.spec.name = v;
    else if (key == "--artifact") o.spec.artifact = v;
    else if (key == "--lookup") o.spec.lookup = std::atof(v);
    else if (key == "--tokens") o.tokens = std::atoll(v);
    else if (key == "--turns") o.turns = std::atoi(v);
    else if (key == "--reply-tokens") o.reply_tokens = std::atoi(v);
    else SAAP_THROW_FMT(InvalidArgument, "unknown option %s", key.c_str());
  }
  return o;
}

ArtifactIdentity identity_of(const LlamaModel& model) {
  ArtifactIdentity id;
  id.model_identity = model.identity();
  id.n_layers = model.config().n_layers;
  id.n_heads = model.config().n_heads;
  id.n_kv_heads = model.config().n_kv_heads;
  id.head_dim = model.config().head_dim;
  return id;
}

int32_t argmax(const std::vector<float>& logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best]) best = int32_t(i);
  return best;
}

// Consecutive passages of the evaluation text, `chars` characters each.
class Passages {
 public:
  Passages() {
    std::ifstream in(default_text_path("eval.txt"), std::ios::binary);
    text_.assign(std::istreambuf_iterator<char>(in), {});
    SAAP_CHECK_MSG(text_.size() > 100000, BadFile, "eval.txt is too short for a soak");
  }
  std::string next(size_t chars) {
    if (at_ + chars > text_.size()) at_ = 0;
    std::string s = text_.substr(at_, chars);
    at_ += chars;
    return s;
  }

 private:
  std::string text_;
  size_t at_ = 200000;  // past the front matter
};

// Decodes greedily from `logits` until the cache holds `until` tokens or `count` were decoded.
std::vector<int32_t> decode(LlamaSession& session, std::vector<float>& logits, int64_t until, int64_t count) {
  std::vector<int32_t> out;
  while (session.length() < until && int64_t(out.size()) < count) {
    const int32_t next = argmax(logits);
    out.push_back(next);
    session.forward(&next, 1, logits.data());
  }
  return out;
}

json run_generate(const Options& o, std::shared_ptr<const LlamaModel> model, const MethodFactory& factory) {
  const int64_t context = std::min<int64_t>(o.tokens, model->config().context_length);
  LlamaSession session(model, context, factory, AttentionMode::DensePrefill);
  std::vector<float> logits(size_t(model->config().vocab_size));
  Passages passages;
  std::vector<int32_t> prompt = model->tokenizer().encode(passages.next(4000), /*add_bos=*/true);
  prompt.resize(std::min<size_t>(prompt.size(), size_t(std::min<int64_t>(512, context / 2))));
  json points = json::array({checkpoint(0)});
  session.forward(prompt.data(), int64_t(prompt.size()), logits.data());
  points.push_back(checkpoint(session.length()));
  const int64_t step = std::max<int64_t>(1, (context - session.length()) / 8);
  while (session.length() < context) {
    decode(session, logits, context, step);
    points.push_back(checkpoint(session.length()));
  }
  return {{"tokens", session.length()}, {"prompt_tokens", prompt.size()}, {"checkpoints", points},
          {"lookup_fraction", session.stats().fraction()}};
}

// One conversation of o.turns turns on `session` (reset first). Returns the checkpoints per turn.
json converse(const Options& o, LlamaSession& session, std::vector<float>& logits, int64_t capacity) {
  const Tokenizer& tok = session.model().tokenizer();
  session.reset();
  Passages passages;
  std::vector<ChatMessage> history;
  size_t cached_chars = 0;  // how much of the rendered conversation the cache holds
  json points = json::array();
  for (int turn = 0; turn < o.turns; ++turn) {
    history.push_back({"user", passages.next(1000)});
    const std::string rendered = tok.apply_chat_template(history, /*add_generation_prompt=*/true);
    const std::vector<int32_t> ids = tok.encode(rendered.substr(cached_chars), turn == 0, /*parse_special=*/true);
    if (session.length() + int64_t(ids.size()) + o.reply_tokens > capacity) break;  // the context is full
    session.forward(ids.data(), int64_t(ids.size()), logits.data());
    const std::vector<int32_t> reply = decode(session, logits, capacity, o.reply_tokens);
    history.push_back({"assistant", tok.decode(reply)});
    // The rendered history ends with the reply followed by the template's end of turn, which the
    // next turn's text carries: the cache holds everything up to the reply's last byte.
    const std::string with_reply = tok.apply_chat_template(history, /*add_generation_prompt=*/false);
    cached_chars = with_reply.rfind(history.back().content) + history.back().content.size();
    json p = checkpoint(session.length());
    p["turn"] = turn;
    points.push_back(p);
  }
  return points;
}

json run_chat(const Options& o, std::shared_ptr<const LlamaModel> model, const MethodFactory& factory) {
  const int64_t capacity = model->config().context_length;
  LlamaSession session(model, capacity, factory, AttentionMode::DensePrefill);
  std::vector<float> logits(size_t(model->config().vocab_size));
  const json first = converse(o, session, logits, capacity);
  const json second = converse(o, session, logits, capacity);
  const double growth = second.back()["live_heap_mib"].get<double>() - first.back()["live_heap_mib"].get<double>();
  return {{"tokens", first.back()["tokens"]},
          {"turns", first.size()},
          {"rounds", {first, second}},
          {"live_heap_growth_mib", growth},
          {"lookup_fraction", session.stats().fraction()}};
}

int run(int argc, char** argv) {
  if (argc == 2 && std::strcmp(argv[1], "methods") == 0) {
    for (const std::string& name : method_names()) std::printf("%s\n", name.c_str());
    return 0;
  }
  const Options o = parse(argc, argv);
  const auto start = std::chrono::steady_clock::now();
  auto model = LlamaModel::load(default_model_path(), false);
  const MethodFactory factory = make_method_factory(o.spec, identity_of(*model));
  json result = o.phase == "generate" ? run_generate(o, model, factory) : run_chat(o, model, factory);
  result["phase"] = o.phase;
  result["method"] = o.spec.describe();
  result["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result["peak_rss_mib"] = status_mib("VmHWM");
  std::printf("%s\n", result.dump().c_str());
  // Flat: a second identical conversation on the same session must not hold more heap than the
  // first (1 MiB of slack for allocator bookkeeping).
  if (o.phase == "chat" && result["live_heap_growth_mib"].get<double>() > 1.0) {
    std::fprintf(stderr, "saap_soak: the live heap grew by %.1f MiB over a repeated conversation\n",
                 result["live_heap_growth_mib"].get<double>());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace saap

int main(int argc, char** argv) {
  try {
    return saap::run(argc, argv);
  } catch (const saap::Error& e) {
    std::fprintf(stderr, "saap_soak: %s\n", e.what());
    return 2;
  }
}
