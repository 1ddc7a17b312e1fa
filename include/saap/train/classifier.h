// Training of Saap's query router (PartitionClassifier, a 2-layer ReLU MLP per query head).
//
// Loss: weighted soft cross-entropy between softmax(scores) and the target distribution of the
// query's attention mass over the key partitions,
//   L = sum_i w_i * (-sum_c t_ic log softmax(s_i)_c) / sum_i w_i.
// Why: the router's job is to rank partitions by the mass they hold (the paper's objective is the
// mass recall of the partitions it reads); cross-entropy against the mass distribution is the
// smooth surrogate whose optimum is scores ordered like the masses, and it needs no threshold to
// turn masses into labels (as a multi-label loss on the "top" partitions would). w_i is the share
// of the query's attention that the partitions must find (what the sinks and window do not
// cover), so queries whose attention sits on the sinks barely count.
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

// Parameters as one flat vector: [w1 (hidden x in) | b1 (hidden) | w2 (out x hidden) | b2 (out)].
struct MlpShape {
  int in = 0, hidden = 0, out = 0;
  int64_t size() const { return int64_t(hidden) * (in + 1) + int64_t(out) * (hidden + 1); }
  int64_t off_b1() const { return int64_t(hidden) * in; }
  int64_t off_w2() const { return off_b1() + hidden; }
  int64_t off_b2() const { return off_w2() + int64_t(out) * hidden; }
};

// The loss above on n rows (x [n][in], target [n][out], weight [n] or null for 1) and, when grad
// is not null, its gradient with respect to theta (same layout). Accumulates in double.
template <class T>
double mlp_loss(const MlpShape& shape, const T* theta, const T* x, const T* target, const T* weight, int64_t n, T* grad);

struct ClassifierData {
  const float* x = nullptr;       // [n][in]
  const float* target = nullptr;  // [n][out], rows are distributions
  const float* weight = nullptr;  // [n] >= 0, or null for 1
  int64_t n = 0;
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
// standardization folded into the first layer afterwards). val may be empty (n = 0): then the
// training loss drives early stopping and the recall is measured on the training set.
ClassifierStats train_classifier(PartitionClassifier& model, int in_dim, int out_dim, const ClassifierData& train,
                                 const ClassifierData& val, const ClassifierOptions& options);

// Weighted mean over rows of the target mass inside the top `at` partitions by model score.
double classifier_recall(const PartitionClassifier& model, const ClassifierData& data, int at);

}  // namespace saap
