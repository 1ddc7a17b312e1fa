// saap generate: prefill a prompt with exact attention, then decode token by token through the
// chosen attention method, streaming the text as it is produced.
#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/model/sampler.h"

namespace saap::cli {

namespace {

// Bytes of `pending` that end on a complete UTF-8 sequence: a token may stop inside a multi-byte
// character (byte-level BPE), whose remaining bytes come with the next token.
size_t complete_utf8_prefix(const std::string& pending) {
  const size_t n = pending.size();
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const auto c = static_cast<unsigned char>(pending[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back for the lead byte
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? n - back : n;
  }
  return n;  // no lead byte within reach: invalid bytes, pass them through
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

void register_generate(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt, streaming it as it is produced");
  struct Opts {
    std::string model, prompt, system;
    bool chat = false;
    int max_tokens = 256;
    SamplerConfig sampler;
    MethodSpec spec;
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--prompt", o->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template (a user turn)");
  cmd->add_option("--system", o->system, "System message for --chat (default: the template's own)");
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate at most")->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", o->sampler.temperature, "Sampling temperature; 0 is greedy")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", o->sampler.top_k, "Sample among the k most likely tokens (0: all)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-p", o->sampler.top_p, "Nucleus: smallest set of tokens with this probability")
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o->sampler.seed, "Sampling seed");
  cmd->add_option("--model", o->model, "GGUF model (default: the bundled SmolLM2-135M-Instruct)");
  add_method_options(cmd, o->spec);
  cmd->callback([o, &global] {
    auto model = LlamaModel::load(o->model.empty() ? default_model_path() : o->model, !global.json);
    const Tokenizer& tok = model->tokenizer();
    const MethodFactory factory = make_method_factory(o->spec, model_artifact_identity(*model));
    Sampler sampler(o->sampler);

    std::string text = o->prompt;
    if (o->chat) {
      std::vector<ChatMessage> messages;
      if (!o->system.empty()) messages.push_back({"system", o->system});
      messages.push_back({"user", o->prompt});
      text = tok.apply_chat_template(messages, /*add_generation_prompt=*/true);
    }
    const std::vector<int32_t> prompt = tok.encode(text, /*add_bos=*/true, /*parse_special=*/o->chat);
    SAAP_CHECK_MSG(!prompt.empty(), InvalidArgument, "--prompt encodes to no tokens");
    const int64_t capacity = std::min<int64_t>(model->config().context_length, int64_t(prompt.size()) + o->max_tokens);
    SAAP_CHECK_FMT(int64_t(prompt.size()) < capacity, InvalidArgument,
                   "the prompt has %zu tokens, leaving no room in the context length of %lld", prompt.size(),
                   (long long)model->config().context_length);
    LlamaSession session(model, capacity, factory, AttentionMode::DensePrefill);

    std::vector<float> logits(size_t(model->config().vocab_size));
    auto start = std::chrono::steady_clock::now();
    session.forward(prompt.data(), int64_t(prompt.size()), logits.data());
    const double prefill_s = seconds_since(start);

    std::string output, pending;
    std::string stop = "max-tokens";
    int64_t generated = 0, decode_steps = 0;
    start = std::chrono::steady_clock::now();
    while (true) {
      const int32_t next = sampler.sample(logits.data(), model->config().vocab_size);
      if (tok.is_end_of_generation(next)) {
        stop = "end-of-generation";
        break;
      }
      ++generated;
      pending += tok.token_bytes(next);
      const size_t ready = complete_utf8_prefix(pending);
      if (!global.json && ready) {
        std::fwrite(pending.data(), 1, ready, stdout);
        std::fflush(stdout);
      }
      output += pending.substr(0, ready);
      pending.erase(0, ready);
      if (generated == o->max_tokens) break;
      if (session.length() == capacity) {
        stop = "context-full";
        break;
      }
      session.forward(&next, 1, logits.data());
      ++decode_steps;
    }
    const double decode_s = seconds_since(start);
    output += pending;  // whatever is left, even if it is not valid UTF-8
    if (!global.json) {
      std::printf("%s\n", pending.c_str());
      std::fflush(stdout);  // the text before the statistics on stderr
    }

    nlohmann::json result = {{"model", model->identity()},
                             {"method", o->spec.describe()},
                             {"prompt_tokens", prompt.size()},
                             {"generated_tokens", generated},
                             {"stop", stop},
                             {"prefill_seconds", prefill_s},
                             {"prefill_tokens_per_second", double(prompt.size()) / prefill_s},
                             {"decode_seconds", decode_s},
                             {"decode_tokens_per_second", decode_steps ? double(decode_steps) / decode_s : 0.0},
                             {"lookup_fraction", session.stats().fraction()},
                             {"text", output}};
    emit(global, result, [&] {
      std::fprintf(stderr,
                   "[%s] prefill %zu tokens %.1f tok/s | decode %lld tokens %.1f tok/s | lookup %.3f | stop: %s\n",
                   o->spec.describe().c_str(), prompt.size(), result["prefill_tokens_per_second"].get<double>(),
                   (long long)decode_steps, result["decode_tokens_per_second"].get<double>(),
                   session.stats().fraction(), stop.c_str());
    });
  });
}

}  // namespace saap::cli
