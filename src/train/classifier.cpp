#include "saap/train/classifier.h"

#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "saap/core/error.h"
#include "saap/core/progress.h"

namespace saap {

namespace {

void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0f, a, lda, b,
              ldb, 0.0f, c, ldc);
}
void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, 1.0, a, lda, b,
              ldb, 0.0, c, ldc);
}

// C += A B^T (the linear skip's scores added to the MLP's).
void gemm_add(int m, int n, int k, const float* a, int lda, const float* b, int ldb, float* c, int ldc) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, a, lda, b, ldb, 1.0f, c, ldc);
}
void gemm_add(int m, int n, int k, const double* a, int lda, const double* b, int ldb, double* c, int ldc) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0, a, lda, b, ldb, 1.0, c, ldc);
}

// std:: distributions differ between standard libraries; these draws are the same everywhere.
double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * (1.0 / 9007199254740992.0); }
double normal(std::mt19937_64& rng) {
  const double u1 = 1.0 - uniform01(rng), u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
void shuffle(std::vector<int64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(rng() % i)]);
}

void check_data(const ClassifierData& d, int in, int out, const char* which) {
  SAAP_CHECK_FMT(d.n >= 0 && (d.n == 0 || (d.x && d.target)), InvalidArgument, "%s set: n = %lld with null data", which,
                 (long long)d.n);
  for (int64_t i = 0; i < d.n; ++i) {
    for (int j = 0; j < in; ++j)
      SAAP_CHECK_FMT(std::isfinite(d.x[i * in + j]), NonFinite, "%s set: x[%lld][%d] is not finite", which, (long long)i, j);
    for (int c = 0; c < out; ++c)
      SAAP_CHECK_FMT(std::isfinite(d.target[i * out + c]) && d.target[i * out + c] >= 0, InvalidArgument,
                     "%s set: target[%lld][%d] = %g must be finite and >= 0", which, (long long)i, c,
                     double(d.target[i * out + c]));
    if (d.weight)
      SAAP_CHECK_FMT(std::isfinite(d.weight[i]) && d.weight[i] >= 0, InvalidArgument,
                     "%s set: weight[%lld] = %g must be finite and >= 0", which, (long long)i, double(d.weight[i]));
    if (d.offset) {
      bool any = false;
      for (int c = 0; c < out; ++c) {
        const float o = d.offset[i * out + c];
        SAAP_CHECK_FMT(!std::isnan(o) && o != INFINITY, InvalidArgument, "%s set: offset[%lld][%d] = %g must be finite or -inf",
                       which, (long long)i, c, double(o));
        SAAP_CHECK_FMT(std::isfinite(o) || d.target[i * out + c] == 0, InvalidArgument,
                       "%s set: target[%lld][%d] = %g but the partition holds no candidate key (offset -inf)", which,
                       (long long)i, c, double(d.target[i * out + c]));
        any = any || std::isfinite(o);
      }
      SAAP_CHECK_FMT(any, InvalidArgument, "%s set: row %lld has no partition with a candidate key", which, (long long)i);
    }
  }
}

}  // namespace

template <class T>
double mlp_loss(const MlpShape& s, const T* theta, const T* x, const T* target, const T* weight, const T* offset,
                int64_t n, T* grad) {
  const int D = s.in, H = s.hidden, C = s.out, N = int(n);
  const T *w1 = theta, *b1 = theta + s.off_b1(), *w2 = theta + s.off_w2(), *b2 = theta + s.off_b2(),
          *u = theta + s.off_u();
  if (grad) std::fill(grad, grad + s.size(), T(0));
  if (n == 0) return 0.0;
  std::vector<T> z1(size_t(N) * H), sc(size_t(N) * C);
  gemm(false, true, N, H, D, x, D, w1, D, z1.data(), H);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < H; ++j) {
      T& z = z1[size_t(i) * H + j];
      z = std::max(T(0), z + b1[j]);  // z1 now holds the activations; z > 0 is the ReLU's mask
    }
  gemm(false, true, N, C, H, z1.data(), H, w2, H, sc.data(), C);
  if (s.skip) gemm_add(N, C, D, x, D, u, D, sc.data(), C);

  double total = 0, wsum = 0;
  for (int i = 0; i < N; ++i) wsum += weight ? double(weight[i]) : 1.0;
  if (wsum <= 0) return 0.0;
  // sc becomes dL/dscores in place; a partition with no candidate key (offset -inf) takes no
  // probability and gets no gradient.
  for (int i = 0; i < N; ++i) {
    T* row = sc.data() + size_t(i) * C;
    const T* t = target + size_t(i) * C;
    const T* off = offset ? offset + size_t(i) * C : nullptr;
    const double w = (weight ? double(weight[i]) : 1.0) / wsum;
    double mx = -INFINITY;
    for (int c = 0; c < C; ++c) {
      row[c] += b2[c];
      if (!off || std::isfinite(double(off[c]))) mx = std::max(mx, double(row[c]) + (off ? double(off[c]) : 0.0));
    }
    double z = 0, ts = 0, tdot = 0;
    for (int c = 0; c < C; ++c) {
      if (off && !std::isfinite(double(off[c]))) continue;
      const double r = double(row[c]) + (off ? double(off[c]) : 0.0);
      z += std::exp(r - mx), ts += double(t[c]), tdot += double(t[c]) * r;
    }
    const double lse = mx + std::log(z);
    total += w * (lse * ts - tdot);
    for (int c = 0; c < C; ++c) {
      const bool present = !off || std::isfinite(double(off[c]));
      const double r = double(row[c]) + (off ? double(off[c]) : 0.0);
      row[c] = present ? T(w * (std::exp(r - lse) * ts - double(t[c]))) : T(0);
    }
  }
  if (!grad) return total;

  T *gw1 = grad, *gb1 = grad + s.off_b1(), *gw2 = grad + s.off_w2(), *gb2 = grad + s.off_b2();
  gemm(true, false, C, H, N, sc.data(), C, z1.data(), H, gw2, H);
  for (int i = 0; i < N; ++i)
    for (int c = 0; c < C; ++c) gb2[c] += sc[size_t(i) * C + c];
  if (s.skip) gemm(true, false, C, D, N, sc.data(), C, x, D, grad + s.off_u(), D);
  std::vector<T> da(size_t(N) * H);
  gemm(false, false, N, H, C, sc.data(), C, w2, H, da.data(), H);
  for (size_t i = 0; i < da.size(); ++i)
    if (!(z1[i] > T(0))) da[i] = T(0);
  gemm(true, false, H, D, N, da.data(), H, x, D, gw1, D);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < H; ++j) gb1[j] += da[size_t(i) * H + j];
  return total;
}

template double mlp_loss<float>(const MlpShape&, const float*, const float*, const float*, const float*, const float*,
                                int64_t, float*);
template double mlp_loss<double>(const MlpShape&, const double*, const double*, const double*, const double*,
                                 const double*, int64_t, double*);

double classifier_recall(const PartitionClassifier& m, const ClassifierData& d, int at) {
  SAAP_CHECK_FMT(at > 0 && at <= m.out_dim, InvalidArgument, "recall at = %d must be in [1, %d]", at, m.out_dim);
  std::vector<float> sc(size_t(m.out_dim)), h(size_t(m.hidden));
  std::vector<int32_t> order(size_t(m.out_dim));
  double got = 0, wsum = 0;
  for (int64_t i = 0; i < d.n; ++i) {
    m.scores(d.x + i * m.in_dim, sc.data(), h.data());
    if (d.offset)
      for (int c = 0; c < m.out_dim; ++c) sc[size_t(c)] += d.offset[i * m.out_dim + c];
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + at, order.end(),
                      [&](int32_t a, int32_t b) { return sc[size_t(a)] > sc[size_t(b)] || (sc[size_t(a)] == sc[size_t(b)] && a < b); });
    double mass = 0;
    for (int k = 0; k < at; ++k) mass += d.target[i * m.out_dim + order[size_t(k)]];
    const double w = d.weight ? d.weight[i] : 1.0;
    got += w * mass, wsum += w;
  }
  return wsum > 0 ? got / wsum : 0.0;
}

namespace {

double oracle_recall(const ClassifierData& d, int C, int at) {
  std::vector<float> row(static_cast<size_t>(C));
  double got = 0, wsum = 0;
  for (int64_t i = 0; i < d.n; ++i) {
    std::copy(d.target + i * C, d.target + (i + 1) * C, row.begin());
    std::nth_element(row.begin(), row.begin() + (at - 1), row.end(), std::greater<float>());
    const double mass = std::accumulate(row.begin(), row.begin() + at, 0.0);
    const double w = d.weight ? d.weight[i] : 1.0;
    got += w * mass, wsum += w;
  }
  return wsum > 0 ? got / wsum : 0.0;
}

// Inputs standardized by the training set's statistics (queries of a head have a few huge
// dimensions; Adam's single learning rate suits unit-scale inputs).
struct Standardizer {
  std::vector<double> mean, inv_std;
  Standardizer(const ClassifierData& d, int D) : mean(size_t(D), 0.0), inv_std(size_t(D), 0.0) {
    for (int64_t i = 0; i < d.n; ++i)
      for (int j = 0; j < D; ++j) mean[size_t(j)] += d.x[i * D + j];
    for (auto& m : mean) m /= double(std::max<int64_t>(d.n, 1));
    std::vector<double> var(size_t(D), 0.0);
    for (int64_t i = 0; i < d.n; ++i)
      for (int j = 0; j < D; ++j) var[size_t(j)] += (d.x[i * D + j] - mean[size_t(j)]) * (d.x[i * D + j] - mean[size_t(j)]);
    for (int j = 0; j < D; ++j) {
      const double sd = std::sqrt(var[size_t(j)] / double(std::max<int64_t>(d.n, 1)));
      inv_std[size_t(j)] = sd > 1e-6 ? 1.0 / sd : 1.0;  // a constant dimension carries nothing to scale
    }
  }
  std::vector<float> apply(const ClassifierData& d) const {
    const int D = int(mean.size());
    std::vector<float> out(size_t(d.n) * D);
    for (int64_t i = 0; i < d.n; ++i)
      for (int j = 0; j < D; ++j) out[size_t(i * D + j)] = float((d.x[i * D + j] - mean[size_t(j)]) * inv_std[size_t(j)]);
    return out;
  }
};

double dataset_loss(const MlpShape& s, const std::vector<float>& theta, const float* x, const ClassifierData& d) {
  // Chunks bound the scratch memory; the per-chunk losses are re-weighted to the whole set's.
  const int64_t chunk = 1024;
  double total = 0, wsum_all = 0;
  for (int64_t i = 0; i < d.n; ++i) wsum_all += d.weight ? d.weight[i] : 1.0;
  if (wsum_all <= 0) return 0.0;
  for (int64_t b = 0; b < d.n; b += chunk) {
    const int64_t m = std::min(chunk, d.n - b);
    double wsum = 0;
    for (int64_t i = b; i < b + m; ++i) wsum += d.weight ? d.weight[i] : 1.0;
    total += wsum / wsum_all * mlp_loss<float>(s, theta.data(), x + b * s.in, d.target + b * s.out,
                                               d.weight ? d.weight + b : nullptr,
                                               d.offset ? d.offset + b * s.out : nullptr, m, nullptr);
  }
  return total;
}

}  // namespace

ClassifierStats train_classifier(PartitionClassifier& model, int D, int C, const ClassifierData& train,
                                 const ClassifierData& val, const ClassifierOptions& o, const float* skip_init) {
  const auto t0 = std::chrono::steady_clock::now();
  SAAP_CHECK_FMT(D > 0 && C > 0, InvalidArgument, "classifier in_dim = %d, out_dim = %d must be positive", D, C);
  SAAP_CHECK_FMT(o.hidden > 0, InvalidArgument, "classifier hidden = %d must be positive", o.hidden);
  SAAP_CHECK_FMT(o.epochs > 0, InvalidArgument, "classifier epochs = %d must be positive", o.epochs);
  SAAP_CHECK_FMT(o.batch > 0, InvalidArgument, "classifier batch = %d must be positive", o.batch);
  SAAP_CHECK_FMT(o.lr > 0 && std::isfinite(o.lr), InvalidArgument, "classifier lr = %g must be positive", double(o.lr));
  SAAP_CHECK_FMT(o.patience > 0, InvalidArgument, "classifier patience = %d must be positive", o.patience);
  SAAP_CHECK_FMT(train.n > 0, InvalidArgument, "classifier training set is empty (n = %lld)", (long long)train.n);
  check_data(train, D, C, "training");
  check_data(val, D, C, "held-out");

  if (skip_init)
    for (int64_t i = 0; i < int64_t(C) * D; ++i)
      SAAP_CHECK_FMT(std::isfinite(skip_init[i]), NonFinite, "skip_init[%lld] is not finite", (long long)i);
  const MlpShape s{D, o.hidden, C, skip_init != nullptr};
  const int H = o.hidden;
  std::mt19937_64 rng(o.seed);
  std::vector<float> theta(size_t(s.size()), 0.0f);
  // He init for the ReLU layer. The output layer starts small, or at zero with the skip, so that
  // training starts exactly at the skip's routing (the MLP then learns a residual).
  for (int64_t i = 0; i < s.off_b1(); ++i) theta[size_t(i)] = float(normal(rng) * std::sqrt(2.0 / D));
  if (!s.skip)
    for (int64_t i = s.off_w2(); i < s.off_b2(); ++i) theta[size_t(i)] = float(normal(rng) * std::sqrt(1.0 / H) * 0.1);

  const Standardizer z(train, D);
  const std::vector<float> xtrain = z.apply(train), xval = z.apply(val);
  if (skip_init) {
    // U on standardized inputs: U_raw x = U_raw mu + (U_raw * std) x_std; b2 takes U_raw mu, so the
    // router starts exactly at scores U_raw x.
    for (int c = 0; c < C; ++c) {
      double bias = 0;
      for (int k = 0; k < D; ++k) {
        const double u = skip_init[int64_t(c) * D + k];
        theta[size_t(s.off_u() + int64_t(c) * D + k)] = float(u / z.inv_std[size_t(k)]);
        bias += u * z.mean[size_t(k)];
      }
      theta[size_t(s.off_b2() + c)] = float(bias);
    }
  } else {
    // The bias starts at the best input-free guess: the log of the mean target (of the mean mass
    // per candidate key, with offsets), so training starts from the prior over partitions.
    std::vector<double> mass(size_t(C), 0.0), count(size_t(C), 0.0);
    for (int64_t i = 0; i < train.n; ++i) {
      const double w = train.weight ? train.weight[i] : 1.0;
      for (int c = 0; c < C; ++c) {
        mass[size_t(c)] += w * train.target[i * C + c];
        count[size_t(c)] += w * (train.offset ? std::exp(double(train.offset[i * C + c])) : 1.0);
      }
    }
    for (int c = 0; c < C; ++c)
      theta[size_t(s.off_b2() + c)] = float(std::log(mass[size_t(c)] / std::max(count[size_t(c)], 1e-30) + 1e-9));
  }
  const ClassifierData& stop_set = val.n > 0 ? val : train;
  const float* stop_x = val.n > 0 ? xval.data() : xtrain.data();

  std::vector<float> m(theta.size(), 0.0f), v(theta.size(), 0.0f), g(theta.size()), best = theta;
  std::vector<float> bx(size_t(o.batch) * D), bt(size_t(o.batch) * C), bw(size_t(o.batch)), bo(train.offset ? size_t(o.batch) * C : 0);
  std::vector<int64_t> idx(size_t(train.n));
  std::iota(idx.begin(), idx.end(), 0);
  ClassifierStats st;
  st.best_val_loss = INFINITY;
  const float b1c = 0.9f, b2c = 0.999f, eps = 1e-8f;
  int64_t step = 0;
  int stale = 0;
  ProgressBar bar(o.label, o.epochs, o.progress);
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    shuffle(idx, rng);
    double ep_loss = 0, ep_w = 0;
    for (int64_t b = 0; b < train.n; b += o.batch) {
      const int64_t n = std::min<int64_t>(o.batch, train.n - b);
      double wsum = 0;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = idx[size_t(b + k)];
        std::copy(xtrain.begin() + i * D, xtrain.begin() + (i + 1) * D, bx.begin() + k * D);
        std::copy(train.target + i * C, train.target + (i + 1) * C, bt.begin() + k * C);
        bw[size_t(k)] = train.weight ? train.weight[i] : 1.0f;
        if (train.offset) std::copy(train.offset + i * C, train.offset + (i + 1) * C, bo.begin() + k * C);
        wsum += bw[size_t(k)];
      }
      if (wsum <= 0) continue;
      const double loss = mlp_loss<float>(s, theta.data(), bx.data(), bt.data(), bw.data(),
                                          train.offset ? bo.data() : nullptr, n, g.data());
      ep_loss += loss * wsum, ep_w += wsum;
      ++step;
      const float c1 = 1.0f - std::pow(b1c, float(step)), c2 = 1.0f - std::pow(b2c, float(step));
      for (size_t k = 0; k < theta.size(); ++k) {
        m[k] = b1c * m[k] + (1 - b1c) * g[k];
        v[k] = b2c * v[k] + (1 - b2c) * g[k] * g[k];
        theta[k] -= o.lr * (m[k] / c1) / (std::sqrt(v[k] / c2) + eps);
      }
    }
    st.train_loss.push_back(ep_w > 0 ? ep_loss / ep_w : 0.0);
    const double vl = dataset_loss(s, theta, stop_x, stop_set);
    SAAP_CHECK_FMT(std::isfinite(vl), NonFinite, "%s: held-out loss became %g at epoch %d (lr = %g too high?)",
                   o.label.c_str(), vl, epoch, double(o.lr));
    st.val_loss.push_back(vl);
    bar.update(epoch, format("loss %.4f / held-out %.4f", st.train_loss.back(), vl));
    if (st.best_epoch == 0 || vl < st.best_val_loss - 1e-6 * std::abs(st.best_val_loss)) {
      st.best_val_loss = vl, st.best_epoch = epoch, best = theta, stale = 0;
    } else if (++stale >= o.patience) {
      break;
    }
  }
  bar.finish(format("best epoch %d, held-out loss %.4f", st.best_epoch, st.best_val_loss));

  // Fold the standardization: W1 ((x - mu) * inv_std) + b1 = (W1 * inv_std) x + (b1 - (W1 * inv_std) mu),
  // and the skip into 2 * D more hidden units: U x = U relu(x) - U relu(-x).
  const int H_out = H + (s.skip ? 2 * D : 0);
  model = PartitionClassifier(D, H_out, C);
  for (int j = 0; j < H; ++j) {
    double bias = best[size_t(s.off_b1() + j)];
    for (int k = 0; k < D; ++k) {
      const double w = double(best[size_t(j * D + k)]) * z.inv_std[size_t(k)];
      model.w1[size_t(j * D + k)] = float(w);
      bias -= w * z.mean[size_t(k)];
    }
    model.b1[size_t(j)] = float(bias);
  }
  for (int c = 0; c < C; ++c) {
    for (int j = 0; j < H; ++j) model.w2[size_t(int64_t(c) * H_out + j)] = best[size_t(s.off_w2() + int64_t(c) * H + j)];
    double bias = best[size_t(s.off_b2() + c)];
    if (s.skip)
      for (int k = 0; k < D; ++k) {
        const double u = double(best[size_t(s.off_u() + int64_t(c) * D + k)]) * z.inv_std[size_t(k)];
        model.w2[size_t(int64_t(c) * H_out + H + k)] = float(u);
        model.w2[size_t(int64_t(c) * H_out + H + D + k)] = float(-u);
        bias -= u * z.mean[size_t(k)];
      }
    model.b2[size_t(c)] = float(bias);
  }
  if (s.skip)
    for (int k = 0; k < D; ++k) {
      model.w1[size_t(int64_t(H + k) * D + k)] = 1.0f;
      model.w1[size_t(int64_t(H + D + k) * D + k)] = -1.0f;
    }

  st.recall_at = o.recall_at > 0 ? std::min(o.recall_at, C) : std::max(1, C / 20);
  st.val_recall = classifier_recall(model, stop_set, st.recall_at);
  st.val_oracle_recall = oracle_recall(stop_set, C, st.recall_at);
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return st;
}

}  // namespace saap
