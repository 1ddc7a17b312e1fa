// Training of Saap's query router (PartitionClassifier, a 2-layer ReLU MLP per query head).
//
// What the router predicts. Its score s_c is the log attention DENSITY of key partition c (the
// attention per key in it, up to a constant), not the partition's mass: the mass a query gives
// partition c is n_c * exp(s_c) / Z, where n_c is how many of the query's candidate keys lie in c,
// which is known exactly at decode (the inverted lists' sizes) and at training time. Why: the
// budget counts keys, so the selection that maximizes the mass read per key read ranks partitions
// by density; and a router that had to predict masses would have to guess the sizes of the
// partitions in a context it cannot see (a partition's share of a 2k prefix differs from its share
// of a 100k one, and repeated text swells a few partitions). The counts enter as a fixed offset.
//
// Loss: weighted soft cross-entropy between p = softmax(s + log n) over the partitions present
// (n_c > 0) and the target distribution t of the query's attention mass over the partitions,
//   L = sum_i w_i * (-sum_c t_ic log p_ic) / sum_i w_i.
// Why: the router's job is to rank partitions by the mass they hold (the paper's objective is the
// mass recall of the partitions it reads); cross-entropy against the mass distribution is the
// smooth surrogate whose optimum is scores ordered like the masses, and it needs no threshold to
// turn masses into labels (as a multi-label loss on the "top" partitions would). w_i is the share
// of the query's attention that the partitions must find (what the sinks and window do not
// cover), so queries whose attention sits on the sinks barely count.
//
// Optional linear skip: s = W2 relu(W1 x + b1) + b2 + U x, with U initialized from the
// partition's mean keys (q . mean_key / sqrt(d) is the symmetric, first-order estimate of the log
// density) and W2 at zero, so training starts exactly from nearest-mean-key routing and the MLP
// learns the asymmetric correction. The skip is folded into the stored 2-layer MLP exactly, through 2 * in extra hidden
// units (U x = U relu(x) - U relu(-x)), so CPU and GPU keep one router form.
//
// Hand-written forward/backward on mini-batches (cblas GEMM), Adam, early stopping on a held-out
// set, deterministic for a seed. The loss is templated so that the float gradient used in training
// can be checked against finite differences of the double one.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "saap/methods/saap.h"

namespace saap {

// Parameters as one flat vector: [w1 (hidden x in) | b1 (hidden) | w2 (out x hidden) | b2 (out)
// | u (out x in), only with the skip].
struct MlpShape {
  int in = 0, hidden = 0, out = 0;
  bool skip = false;
  int64_t size() const { return off_u() + (skip ? int64_t(out) * in : 0); }
  int64_t off_b1() const { return int64_t(hidden) * in; }
  int64_t off_w2() const { return off_b1() + hidden; }
  int64_t off_b2() const { return off_w2() + int64_t(out) * hidden; }
  int64_t off_u() const { return off_b2() + out; }
};

// The loss above on n rows (x [n][in], target [n][out], weight [n] or null for 1, offset [n][out]
// or null for 0: log n_c, -inf where partition c holds no candidate key, whose target must be 0)
// and, when grad is not null, its gradient with respect to theta (same layout). Accumulates in
// double.
template <class T>
double mlp_loss(const MlpShape& shape, const T* theta, const T* x, const T* target, const T* weight, const T* offset,
                int64_t n, T* grad);

struct ClassifierData {
  const float* x = nullptr;       // [n][in]
  const float* target = nullptr;  // [n][out], rows are distributions
  const float* weight = nullptr;  // [n] >= 0, or null for 1
  int64_t n = 0;
  const float* offset = nullptr;  // [n][out] log candidate count per partition (-inf: none), or null
};

struct ClassifierOptions {
  int hidden = 128;
  int epochs = 8;
  int batch = 128;
  float lr = 2e-3f;
  int patience = 2;         // epochs without a better held-out loss before stopping
  uint64_t seed = 1;
  int recall_at = 0;        // partitions for the reported recall; 0: max(1, out / 20)
  bool progress = false;    // a progress bar over epochs (trainers running many heads draw their own)
  std::string label = "classifier";
};

struct ClassifierStats {
  std::vector<double> train_loss, val_loss;  // per epoch run
  int best_epoch = 0;                        // 1-based epoch whose weights were kept
  double best_val_loss = 0;
  int recall_at = 0;
  double val_recall = 0;         // weighted mean held-out mass in the top recall_at partitions by score
  double val_oracle_recall = 0;  // the same with the partitions ranked by their true mass (the ceiling)
  double seconds = 0;
};

// Trains a fresh router (seeded init; inputs standardized on the training set, the
// standardization folded into the first layer afterwards). skip_init [out_dim][in_dim], or null
// for no skip: the initial U of the linear skip, on raw inputs; the returned model then has
// hidden + 2 * in_dim hidden units (the skip folded in). val may be empty (n = 0): then the
// training loss drives early stopping and the recall is measured on the training set.
ClassifierStats train_classifier(PartitionClassifier& model, int in_dim, int out_dim, const ClassifierData& train,
                                 const ClassifierData& val, const ClassifierOptions& options,
                                 const float* skip_init = nullptr);

// Weighted mean over rows of the target mass inside the top `at` partitions by predicted mass
// (score + offset).
double classifier_recall(const PartitionClassifier& model, const ClassifierData& data, int at);

}  // namespace saap
