// saap train saap | kmeans: the key partition (and Saap's query routers) from a calibration set.
#include <cstdio>

#include "cli/commands.h"
#include "cli/validators.h"
#include "saap/core/error.h"
#include "saap/train/saap_trainer.h"

namespace saap::cli {

namespace {

struct TrainOpts {
  std::string calib, out, rope = "pre", partition_from;
  bool l2 = false, no_skip = false;
  SaapTrainOptions train;
};

void add_partition_options(CLI::App* cmd, TrainOpts& o) {
  cmd->add_option("--calib", o.calib, "Calibration set (saap calibrate)")->required();
  cmd->add_option("--out", o.out, "Artifact to write (.safetensors)")->required();
  cmd->add_option("--partitions", o.train.partitions, "Key partitions C per layer and KV head")
      ->check(whole_at_least(1));
  cmd->add_option("--rope", o.rope, "Partition and route on pre-RoPE or post-RoPE vectors")
      ->check(CLI::IsMember({"pre", "post"}));
  cmd->add_flag("--l2", o.l2, "Plain (L2) k-means instead of spherical");
  cmd->add_option("--kmeans-iters", o.train.kmeans_iters, "k-means iterations")->check(whole_at_least(1));
  cmd->add_option("--seed", o.train.seed, "Seed of k-means, the query sample, the split and the routers");
  cmd->add_option("--layers", o.train.layers, "Layers to train (default: all)");
  cmd->add_option("--partition-from", o.partition_from,
                  "Reuse the key partition (centroids) of this saap or kmeans artifact instead of running k-means; "
                  "its partitions, rope and metric must match");
}

// Checks the calibration set against the artifact the partition comes from, then hands its centroids over.
void finish_options(TrainOpts& o, const CalibrationSet& set) {
  o.train.pre_rope = o.rope == "pre";
  o.train.spherical = !o.l2;
  o.train.skip = !o.no_skip;
  if (o.partition_from.empty()) return;
  // A "kmeans" reader takes a kmeans or a saap artifact's partition.
  const PartitionArtifact from = PartitionArtifact::load(o.partition_from, partition_artifact_identity(set, "kmeans"));
  SAAP_CHECK_FMT(from.partitions == o.train.partitions && from.pre_rope == o.train.pre_rope &&
                     from.spherical == o.train.spherical,
                 InvalidArgument,
                 "--partition-from %s has partitions %d, rope %s, %s; this run asks for %d, %s, %s",
                 o.partition_from.c_str(), from.partitions, from.pre_rope ? "pre" : "post",
                 from.spherical ? "spherical" : "l2", o.train.partitions, o.train.pre_rope ? "pre" : "post",
                 o.train.spherical ? "spherical" : "l2");
  for (const auto& [l, layer] : from.layers) o.train.centroids[l] = layer.centroids;
}

// The calibration set and the partition's source artifact, by their sha256.
std::vector<InputIdentity> train_inputs(const TrainOpts& o) {
  std::vector<InputIdentity> inputs = {input_file("calib", o.calib)};
  if (!o.partition_from.empty()) inputs.push_back(input_file("partition_from", o.partition_from));
  return inputs;
}

void print_summary(const GlobalOptions& global, const PartitionArtifact& a, const std::string& out,
                   const std::vector<InputIdentity>& inputs) {
  nlohmann::json result = {{"out", out},
                           {"method", a.identity.method},
                           {"model", a.identity.model_identity},
                           {"partitions", a.partitions},
                           {"hidden", a.hidden},
                           {"rope", a.pre_rope ? "pre" : "post"},
                           {"layers", a.layers.size()}};
  // given_partition_layers: layers whose partition came from --partition-from (all of them when a
  // baseline is to be compared on the same partition).
  for (const char* k : {"seconds", "kmeans_seconds", "labels_seconds", "router_seconds", "given_partition_layers",
                        "mean_val_mass_at_budget", "mean_val_symmetric_mass_at_budget", "mean_val_oracle_mass_at_budget"})
    if (a.train.contains(k)) result[k] = a.train[k];
  emit(global, result, [&] {
    std::printf("%s: %zu layers, C = %d, %s-RoPE, %.1f s -> %s\n", a.identity.method.c_str(), a.layers.size(),
                a.partitions, a.pre_rope ? "pre" : "post", a.train.value("seconds", 0.0), out.c_str());
    if (a.has_classifiers())
      std::printf("held-out mass found at a %g%% lookup (share of what the partitions can find): router %.3f, "
                  "symmetric %.3f, oracle %.3f\n",
                  100 * a.train.value("stat_lookup", 0.0), a.train.value("mean_val_mass_at_budget", 0.0), a.train.value("mean_val_symmetric_mass_at_budget", 0.0),
                  a.train.value("mean_val_oracle_mass_at_budget", 0.0));
  }, inputs);
}

}  // namespace

void register_train_saap(CLI::App& app, const GlobalOptions& global) {
  CLI::App* train = train_command(app);

  auto so = std::make_shared<TrainOpts>();
  auto* saap = train->add_subcommand("saap", "Key partition + per-head query router (Saap)");
  add_partition_options(saap, *so);
  saap->add_option("--hidden", so->train.classifier.hidden, "Router hidden size")->check(whole_at_least(1));
  saap->add_option("--epochs", so->train.classifier.epochs, "Maximum router epochs")->check(whole_at_least(1));
  saap->add_option("--batch", so->train.classifier.batch, "Router mini-batch")->check(whole_at_least(1));
  saap->add_option("--lr", so->train.classifier.lr, "Adam learning rate")->check(above(0));
  saap->add_option("--patience", so->train.classifier.patience, "Epochs without held-out progress before stopping")
      ->check(whole_at_least(1));
  saap->add_option("--max-queries", so->train.max_queries, "Queries per layer (0: all with a long enough prefix)")
      ->check(whole_at_least(0));
  saap->add_option("--min-prefix", so->train.min_prefix, "Smallest query position used")->check(whole_at_least(0));
  saap->add_option("--sinks", so->train.sinks, "Sinks left out of the labels (read anyway at decode)")
      ->check(whole_at_least(0));
  saap->add_option("--window", so->train.window, "Recent window left out of the labels (read anyway at decode)")
      ->check(whole_at_least(0));
  saap->add_flag("--no-skip", so->no_skip, "Router without the linear skip from the partitions' mean keys");
  saap->callback([so, &global] {
    const CalibrationSet set = CalibrationSet::load(so->calib);
    finish_options(*so, set);
    const PartitionArtifact a = train_saap(set, so->train);
    a.save(so->out);
    print_summary(global, a, so->out, train_inputs(*so));
  });

  auto ko = std::make_shared<TrainOpts>();
  auto* km = train->add_subcommand("kmeans", "Key partition only (the symmetric k-means baseline)");
  add_partition_options(km, *ko);
  km->callback([ko, &global] {
    const CalibrationSet set = CalibrationSet::load(ko->calib);
    finish_options(*ko, set);
    const PartitionArtifact a = train_symmetric_kmeans(set, ko->train);
    a.save(ko->out);
    print_summary(global, a, ko->out, train_inputs(*ko));
  });
}

}  // namespace saap::cli
