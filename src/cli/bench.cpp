// saap bench: per-layer decode-step attention time of each method on the CPU, on the default
// model's real keys at a long context, against dense and the memory floor. With --gpu it hands
// over to the CUDA benchmark (bench/cuda/decode_bench) built next to this binary. With --e2e (the
// CPU) or --device cuda it times the whole model end to end through the evaluation backend.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>

#include "cli/commands.h"
#include "cli/validators.h"
#include "cli/device.h"
#include "cli/method_options.h"
#include "saap/core/error.h"
#include "saap/core/paths.h"
#include "saap/core/progress.h"
#include "saap/eval/decode_bench.h"
#include "saap/eval/result_files.h"
#include "saap/train/capture.h"

#ifdef SAAP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace saap::cli {

namespace {

struct BenchOpts {
  std::string model, text, out = "results", stem;
  std::vector<std::string> methods = {"dense", "oracle", "streaming", "h2o", "loki", "saap", "kmeans"};
  std::vector<std::string> artifacts;  // METHOD=PATH
  std::vector<double> lookups = {0.05};
  MethodSpec base;  // sinks, window, k_f, d_f
  DecodeBenchOptions bench;
  bool no_flush = false, gpu = false;
  // End to end (--e2e, or --device cuda): prefill ms and decode tokens/s of the whole model.
  std::string device = "cpu";
  bool e2e = false;
  std::vector<int64_t> prompts = {2048, 8000};
  std::vector<int> batches = {1, 16};
  int decode_steps = 128;
};

std::string shell_output(const std::string& cmd) {
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[256];
    while (std::fgets(buf, sizeof buf, p)) out += buf;
    ::pclose(p);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return out;
}

// The commit of the checkout the bench runs in, "-dirty" when tracked files differ from it.
std::string git_commit() {
  const std::string head = shell_output("git rev-parse HEAD 2>/dev/null");
  if (head.empty()) return "unknown";
  return head + (shell_output("git status --porcelain --untracked-files=no 2>/dev/null").empty() ? "" : "-dirty");
}

std::string read_loadavg() {
  std::ifstream in("/proc/loadavg");
  std::string a, b, c;
  in >> a >> b >> c;
  return a + " " + b + " " + c;
}

std::map<std::string, std::string> parse_artifacts(const std::vector<std::string>& items) {
  std::map<std::string, std::string> m;
  for (const std::string& item : items) {
    const size_t eq = item.find('=');
    SAAP_CHECK_FMT(eq != std::string::npos && eq > 0 && eq + 1 < item.size(), InvalidArgument,
                   "--artifact '%s' must be METHOD=PATH (e.g. loki=loki.safetensors)", item.c_str());
    const std::string name = item.substr(0, eq);
    SAAP_CHECK_FMT(method_needs_artifact(name), InvalidArgument,
                   "--artifact '%s': method '%s' takes no artifact", item.c_str(),
                   name.c_str());
    m[name] = item.substr(eq + 1);
  }
  return m;
}

// One spec per method and budget. Streaming's budget is its sinks + window, sized here to read the
// same fraction of the context as the budgeted methods.
std::vector<MethodSpec> expand_specs(const BenchOpts& o) {
  const auto artifacts = parse_artifacts(o.artifacts);
  std::vector<MethodSpec> specs;
  for (const std::string& name : o.methods) {
    MethodSpec s = o.base;
    s.name = name;
    if (auto it = artifacts.find(name); it != artifacts.end()) s.artifact = it->second;
    if (name == "dense" || name == "loki") {
      specs.push_back(s);
      continue;
    }
    for (double f : o.lookups) {
      s.lookup = f;
      if (name == "streaming")
        s.window = std::max(0, int(std::lround(f * double(o.bench.context))) - s.sinks);
      specs.push_back(s);
    }
  }
  return specs;
}

[[noreturn]] void run_gpu(const BenchOpts& o, const CLI::App& cmd, const std::vector<std::string>& extras) {
#ifndef SAAP_HAVE_CUDA
  (void)o;
  (void)cmd;
  (void)extras;
  SAAP_THROW_MSG(Unsupported,
                 "--gpu: this saap was built without CUDA (configure with -DSAAP_CUDA=ON where nvcc is present, "
                 "or run scripts/gpu_run.sh on the GPU machine)");
#else
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  SAAP_CHECK_FMT(err == cudaSuccess && devices > 0, Unsupported, "--gpu: no CUDA GPU found (%s)",
                 err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
  const std::filesystem::path exe =
      std::filesystem::read_symlink("/proc/self/exe").parent_path() / "bench" / "decode_bench";
  SAAP_CHECK_FMT(::access(exe.c_str(), X_OK) == 0, NotFound,
                 "--gpu: %s not found (build the decode_bench target in this build tree)", exe.c_str());
  std::vector<std::string> args = {exe.string()};
  if (cmd.count("--reps")) args.insert(args.end(), {"--reps", std::to_string(o.bench.reps)});
  if (cmd.count("--out")) args.insert(args.end(), {"--out", o.out});
  args.insert(args.end(), extras.begin(), extras.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  ::execv(exe.c_str(), argv.data());
  SAAP_THROW_FMT(NotFound, "--gpu: cannot run %s", exe.c_str());
#endif
}

void print_table(const DecodeBenchResult& r) {
  std::printf("context %lld, timed on %d thread(s); memcpy (read+write) %.1f GB/s on 1 thread, %.1f GB/s on %d; "
              "floor uses %.1f GB/s\n",
              (long long)r.context, r.threads, r.copy_gbps_1thread, r.copy_gbps_all, r.all_threads, r.floor_gbps);
  std::printf("%-5s %-36s %9s %9s %9s %9s %8s %8s %9s %8s\n", "layer", "method", "total_us", "select_us",
              "attend_us", "KB/query", "lookup", "GB/s", "floor_us", "speedup");
  for (const DecodeBenchRow& row : r.rows) {
    const MethodLayerTiming& t = row.timing;
    std::printf("%-5d %-36s %9.1f %9.1f %9.1f %9.1f %8.4f %8.2f %9.2f %7.2fx\n", t.layer, t.spec.c_str(), t.total_us,
                t.select_us, t.attend_us, t.bytes_per_query() / 1024.0, t.lookup.fraction(), row.gbps, row.floor_us,
                row.speedup);
  }
  for (const auto& n : r.notes) std::printf("note: %s\n", n.c_str());
}

// The whole model end to end on the device: for each prompt length and batch, the prefill time
// (median of --reps after a warm-up) and the decode tokens/s of --decode-steps greedy steps, on a
// fixed pseudo-random prompt (bench_prompt_tokens). The CSV has the columns of
// results/gpu_e2e_<date>_<gpu>.csv (engine,method,batch,prompt_tokens,prefill_ms,decode_tok_s), + device.
void run_end_to_end(BenchOpts& o, const std::vector<MethodSpec>& specs, const GlobalOptions& global) {
  const std::string path = model_path(o.model);
  nlohmann::json doc = {{"reps", o.bench.reps},
                        {"decode_steps", o.decode_steps},
                        {"artifacts", o.artifacts},
                        {"definitions",
                         {{"prefill_ms", "median over --reps (after a warm-up) of the prefill of all sequences of the "
                                         "batch (the GPU: with a method, building every layer's index included)"},
                          {"decode_tok_s", "batch x decode_steps / decode time (the GPU: CUDA events around graph "
                                           "launches)"}}},
                        {"rows", nlohmann::json::array()}};
  CsvTable table{{"engine", "method", "batch", "prompt_tokens", "prefill_ms", "decode_tok_s", "device"}, {}};
  std::vector<std::string> artifacts;
  for (const MethodSpec& s : specs) artifacts.push_back(s.artifact);
  std::vector<InputIdentity> inputs;
  int64_t total = 0, done = 0;
  for (int64_t p : o.prompts) total += p * int64_t(o.batches.size() * specs.size());
  ProgressBar bar("bench e2e", total, !global.json);
  for (const MethodSpec& spec : specs) {
    BackendRequest request;
    request.device = o.device;
    request.model_path = path;
    request.spec = spec;
    request.progress = false;
    request.max_batch = *std::max_element(o.batches.begin(), o.batches.end());
    // + 1: the GPU's eager step that captures the decode graph.
    request.max_context = *std::max_element(o.prompts.begin(), o.prompts.end()) + o.decode_steps + 1;
    auto backend = open_backend(request);
    if (inputs.empty()) {
      inputs = model_run_inputs(backend->identity(), path, "", artifacts);
      doc["model"] = backend->identity();
      doc.update(backend->device_json());
    }
    const std::string label = method_budget_label(spec);
    for (int64_t p : o.prompts)
      for (int b : o.batches) {
        const EndToEndTiming t = backend->time_end_to_end(b, p, o.decode_steps, o.bench.reps);
        doc["rows"].push_back({{"method", label},
                               {"spec", spec.describe()},
                               {"batch", t.batch},
                               {"prompt_tokens", t.prompt_tokens},
                               {"decode_steps", t.decode_steps},
                               {"prefill_ms", t.prefill_ms},
                               {"decode_tok_s", t.decode_tok_s}});
        table.add({"saap", label, std::to_string(b), std::to_string(p), csv_field(t.prefill_ms),
                   csv_field(t.decode_tok_s), backend->device()});
        done += p;
        bar.update(done);
      }
  }
  bar.finish();
  if (o.stem.empty())
    o.stem = "e2e_" + doc["device"].get<std::string>() + "_" + run_provenance()["date"].get<std::string>().substr(0, 10);
  const auto paths = write_result_files(o.out, o.stem, doc, table, inputs);
  emit(global, doc, [&] {
    std::printf("end to end on %s (%s), %d decode steps, prefill median of %d\n", doc["device"].get<std::string>().c_str(),
                doc["device_name"].get<std::string>().c_str(), o.decode_steps, o.bench.reps);
    std::printf("%-16s %6s %8s %12s %14s\n", "method", "batch", "prompt", "prefill_ms", "decode_tok_s");
    for (const auto& row : doc["rows"])
      std::printf("%-16s %6d %8lld %12.2f %14.1f\n", row["method"].get<std::string>().c_str(), row["batch"].get<int>(),
                  (long long)row["prompt_tokens"].get<int64_t>(), row["prefill_ms"].get<double>(),
                  row["decode_tok_s"].get<double>());
    std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
  }, inputs);
}

}  // namespace

void register_bench(CLI::App& app, const GlobalOptions& global) {
  auto* cmd = app.add_subcommand(
      "bench", "Decode-step attention time per layer of each method vs dense and the memory floor; with --e2e or "
               "--device cuda, the whole model end to end (prefill ms, decode tokens/s, batch, context)");
  auto o = std::make_shared<BenchOpts>();
  cmd->add_option("--model", o->model, kModelOptionHelp);
  cmd->add_option("--text", o->text, "Text whose tokens fill the KV cache (default: eval.txt in the cache)");
  cmd->add_option("--context", o->bench.context, "Context length: n_ctx of the last timed query (<= the model's)")
      ->check(whole_at_least(1));
  cmd->add_option("--layers", o->bench.layers, "Layers to time (default: first, middle, last)")->delimiter(',');
  cmd->add_option("--reps", o->bench.reps, "Timed decode steps per method and layer (median reported)")
      ->check(whole_at_least(1));
  cmd->add_option("--warmup", o->bench.warmup, "Untimed steps before them")->check(whole_at_least(0));
  auto* methods = cmd->add_option("--methods", o->methods,
                                  "Methods: dense oracle streaming h2o loki saap kmeans (end to end: dense unless given; "
                                  "on the GPU every method)")
                      ->delimiter(',');
  cmd->add_option("--lookup", o->lookups, "Budgets as fractions of the context (oracle, streaming, h2o, saap, kmeans)")
      ->delimiter(',')
      ->check(in_range(0, 1));
  cmd->add_option("--sinks", o->base.sinks, "First positions always read")->check(whole_at_least(0));
  cmd->add_option("--window", o->base.window, "Most recent positions always read (saap, kmeans)")
      ->check(whole_at_least(0));
  cmd->add_option("--k-f", o->base.k_f, "Loki: fraction of the prefix attended")->check(in_range(0, 1));
  cmd->add_option("--d-f", o->base.d_f, "Loki: fraction of dimensions used for ranking")->check(in_range(0, 1));
  cmd->add_option("--artifact", o->artifacts, "METHOD=PATH: trained index of loki, saap or kmeans (repeatable)");
  cmd->add_option("--timing-threads", o->bench.threads,
                  "OpenMP threads of the timed steps (default: those of --threads; the prefill uses those)")
      ->check(whole_at_least(0));
  cmd->add_flag("--no-flush", o->no_flush, "Do not evict the CPU caches before each timed step");
  cmd->add_option("--out", o->out, "Folder for the JSON and CSV result files");
  cmd->add_option("--stem", o->stem, "Result file stem (default cpu_bench_<date>)");
  cmd->add_flag("--gpu", o->gpu,
                "Run the CUDA benchmark (bench/decode_bench of this build tree) instead; --reps, --out and any arguments saap does not know (--contexts, --batches) go to it");
  add_device_option(cmd, o->device);
  cmd->add_flag("--e2e", o->e2e,
                "End to end: prefill ms and decode tokens/s of the whole model at each --prompts and --batches "
                "(what --device cuda runs)");
  auto* prompts = cmd->add_option("--prompts", o->prompts, "End to end: prompt lengths in tokens")
                      ->delimiter(',')
                      ->check(whole_at_least(1));
  auto* batches = cmd->add_option("--batches", o->batches, "End to end: batch sizes (sequences run together)")
                      ->delimiter(',')
                      ->check(whole_at_least(1));
  auto* steps = cmd->add_option("--decode-steps", o->decode_steps, "End to end: timed greedy decode steps")
                    ->check(whole_at_least(1));
  cmd->allow_extras();
  cmd->callback([o, cmd, methods, prompts, batches, steps, &global] {
    const std::vector<std::string> extras = cmd->remaining();
    SAAP_CHECK_MSG(!(o->gpu && o->device == "cuda"), InvalidArgument,
                   "saap bench: --gpu (the attention kernels' decode_bench) and --device cuda (the whole model end "
                   "to end) are different benchmarks; give one");
    if (o->gpu) run_gpu(*o, *cmd, extras);
    if (!extras.empty()) {
      std::string list;
      for (const auto& e : extras) list += (list.empty() ? "" : " ") + e;
      SAAP_THROW_FMT(InvalidArgument, "saap bench: unknown arguments: %s (see saap bench --help)", list.c_str());
    }
    if (o->e2e || o->device == "cuda") {
      // Dense unless --methods names others (the per-layer bench's default list has methods the
      // GPU runner refuses); each method's budgets as the per-layer bench expands them.
      if (methods->count() == 0) o->methods = {"dense"};
      return run_end_to_end(*o, expand_specs(*o), global);
    }
    for (const CLI::Option* opt : {prompts, batches, steps})
      SAAP_CHECK_FMT(opt->count() == 0, InvalidArgument,
                     "saap bench: %s is an option of the end-to-end bench (--e2e or --device cuda)",
                     opt->get_name().c_str());
    o->bench.flush = !o->no_flush;
    const std::vector<MethodSpec> specs = expand_specs(*o);
    const std::string path = model_path(o->model);
    auto model = LlamaModel::load(path);
    check_decode_bench(model->config(), specs, o->bench);
    const std::string text = o->text.empty() ? default_text_path("eval.txt") : o->text;
    std::vector<std::string> artifacts;
    for (const auto& [method, path] : parse_artifacts(o->artifacts)) artifacts.push_back(path);
    const auto inputs = model_run_inputs(*model, path, text, artifacts);
    const std::vector<int32_t> tokens = text_windows(model->tokenizer(), text, 1, int(o->bench.context)).front();
    const std::string load = read_loadavg();
    const DecodeBenchResult r =
        run_decode_bench(model, tokens, specs, model_artifact_identity(*model), o->bench);

    nlohmann::json doc = {{"model", model->identity()},
                          {"text", text},
                          {"commit", git_commit()},
                          {"artifacts", o->artifacts},
                          {"loadavg_at_start", load},
                          {"loadavg_at_end", read_loadavg()},
                          {"reps", o->bench.reps},
                          {"warmup", o->bench.warmup},
                          {"flush_caches", o->bench.flush},
                          {"definitions",
                           {{"total_us", "median over the timed steps of select + attend of one query (all heads) in one layer"},
                            {"bytes_per_query", "K/V bytes the selection touches (union per KV head) + index bytes, LookupStats"},
                            {"gbps", "bytes_per_query / total_us"},
                            {"floor_us", "bytes_per_query / floor_gbps (memcpy read+write bandwidth, same run)"},
                            {"accounting_us", "part of attend_us spent counting the bytes read, not reading them"}}},
                          {"bench", r.to_json()}};
    CsvTable table{{"method", "spec", "layer", "context", "threads", "total_us", "select_us", "attend_us",
                    "accounting_us", "bytes_per_query", "lookup_fraction", "gbps", "floor_us", "dense_us", "speedup"},
                   {}};
    for (const DecodeBenchRow& row : r.rows) {
      const MethodLayerTiming& t = row.timing;
      table.add({t.method, t.spec, std::to_string(t.layer), std::to_string(t.context), std::to_string(r.threads),
                 csv_field(t.total_us), csv_field(t.select_us), csv_field(t.attend_us), csv_field(t.accounting_us),
                 csv_field(t.bytes_per_query()), csv_field(t.lookup.fraction()), csv_field(row.gbps),
                 csv_field(row.floor_us), csv_field(row.dense_us), csv_field(row.speedup)});
    }
    if (o->stem.empty()) o->stem = "cpu_bench_" + run_provenance()["date"].get<std::string>().substr(0, 10);
    const auto paths = write_result_files(o->out, o->stem, doc, table, inputs);
    emit(global, doc, [&] {
      print_table(r);
      std::printf("wrote %s, %s\n", paths[0].c_str(), paths[1].c_str());
    }, inputs);
  });
}

}  // namespace saap::cli
