// saap generate: prefill a prompt with exact attention, then decode token by token through the
// chosen attention method, streaming the text as it is produced.
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/method_options.h"
#include "cli/device.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/core/progress.h"
#include "saap/core/utf8.h"
#include "saap/model/sampler.h"

namespace saap::cli {

namespace {

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
    std::string device = "cpu";
  };
  auto o = std::make_shared<Opts>();
  cmd->add_option("--prompt", o->prompt, "Prompt text")->required();
  cmd->add_flag("--chat", o->chat, "Wrap the prompt in the model's chat template (a user turn)");
  cmd->add_option("--system", o->system, "System message for --chat (default: the template's own)");
  cmd->add_option("--max-tokens", o->max_tokens, "Tokens to generate at most")->check(whole_at_least(1));
  cmd->add_option("--temperature", o->sampler.temperature, "Sampling temperature; 0 is greedy")
      ->check(at_least(0));
  cmd->add_option("--top-k", o->sampler.top_k, "Sample among the k most likely tokens (0: all)")
      ->check(whole_at_least(0));
  cmd->add_option("--top-p", o->sampler.top_p, "Nucleus: smallest set of tokens with this probability")
      ->check(in_range(0, 1));
  cmd->add_option("--seed", o->sampler.seed, "Sampling seed");
  cmd->add_option("--model", o->model, kModelOptionHelp);
  add_method_options(cmd, o->spec);
  add_device_option(cmd, o->device);
  cmd->callback([o, &global] {
    BackendRequest request;
    request.device = o->device;
    request.model_path = model_path(o->model);
    request.spec = o->spec;
    request.progress = !global.json;
    // The GPU cache holds the prompt and what may follow it (the runner refuses more than the
    // model's context); the prompt's length is not known before the tokenizer is.
    request.max_context = 0;
    auto backend = open_backend(request);
    const Tokenizer& tok = backend->tokenizer();
    Sampler sampler(o->sampler);

    std::vector<int32_t> prompt;
    if (o->chat) {
      std::vector<ChatMessage> messages;
      if (!o->system.empty()) messages.push_back({"system", o->system});
      messages.push_back({"user", o->prompt});
      prompt = tok.encode_chat(messages, /*add_generation_prompt=*/true);  // the user's text stays text
    } else {
      prompt = tok.encode(o->prompt, /*add_bos=*/true);
    }
    SAAP_CHECK_FMT(!prompt.empty(), InvalidArgument,
                   "--prompt '%s' encodes to no tokens (it is empty or holds only bytes the vocabulary lacks)",
                   utf8_sanitize(o->prompt).c_str());

    // A token may end inside a multi-byte character or stand for bytes that are not UTF-8: the
    // stream shows only complete characters, and the JSON gets the same valid text plus the ids.
    Utf8Stream stream;
    std::string output;
    const int64_t n = int64_t(prompt.size());
    ProgressBar bar("prefill", n, !global.json && ::isatty(2), /*show_after_s=*/1.0);
    const auto prefill_start = std::chrono::steady_clock::now();
    const GenerateResult g = backend->generate(
        prompt, o->max_tokens, sampler,
        [&](int32_t next) {
          const std::string ready = stream.push(tok.token_bytes(next));
          if (!global.json && !ready.empty()) {
            std::fwrite(ready.data(), 1, ready.size(), stdout);
            std::fflush(stdout);
          }
          output += ready;
        },
        [&](int64_t done) {
          const double seconds = seconds_since(prefill_start);
          char rate[32];
          std::snprintf(rate, sizeof rate, "%.0f tok/s", seconds > 0 ? double(done) / seconds : 0.0);
          bar.update(done, rate);
          if (done == n) bar.finish();
        });
    const std::vector<int32_t>& generated_ids = g.tokens;
    const std::string& stop = g.stop;
    const int64_t decode_steps = g.decode_steps;
    const double prefill_s = g.prefill_seconds;
    const double decode_s = g.decode_seconds;
    const std::string rest = stream.finish();  // a character the last token left unfinished: U+FFFD
    output += rest;
    if (!global.json) {
      std::printf("%s\n", rest.c_str());
      std::fflush(stdout);  // the text before the statistics on stderr
    }

    const LookupStats& stats = g.stats;
    const double index_fraction = stats.fraction() - stats.kv_fraction();
    nlohmann::json result = {{"model", backend->identity()},
                             {"device", backend->device()},
                             {"device_name", backend->device_name()},
                             {"method", o->spec.describe()},
                             {"prompt_tokens", prompt.size()},
                             {"generated_tokens", generated_ids.size()},
                             {"stop", stop},
                             {"prefill_seconds", prefill_s},
                             {"prefill_tokens_per_second", double(prompt.size()) / prefill_s},
                             {"decode_seconds", decode_s},
                             {"decode_tokens_per_second", decode_steps ? double(decode_steps) / decode_s : 0.0},
                             {"lookup_fraction", stats.fraction()},
                             {"kv_fraction", stats.kv_fraction()},
                             {"index_fraction", index_fraction},
                             {"text", output},
                             {"token_ids", generated_ids}};
    emit(global, result, [&] {
      std::fprintf(stderr, "[%s] prefill %zu tokens %.1f tok/s | decode %lld tokens %.1f tok/s | stop: %s\n",
                   o->spec.describe().c_str(), prompt.size(), result["prefill_tokens_per_second"].get<double>(),
                   (long long)decode_steps, result["decode_tokens_per_second"].get<double>(), stop.c_str());
      if (decode_steps == 0) return;
      // Both fractions are per decode query, over the bytes a dense read of the same cache touches.
      std::fprintf(stderr, "[%s] read per decode step: K/V %.3f + index %.3f of a dense read\n",
                   o->spec.describe().c_str(), stats.kv_fraction(), index_fraction);
      if (index_fraction > 0)
        std::fprintf(stderr,
                     "  (index: what the method reads to choose keys -- router weights, centroids or low-rank "
                     "keys; it does not grow with the context, so on a short chat it can outweigh the cache)\n");
    });
  });
}

}  // namespace saap::cli
