#include "saap/core/tensor.h"

#include <cstdlib>
#include <new>

#include "saap/core/error.h"

namespace saap {

TensorView::TensorView(void* data, DType dtype, std::initializer_list<int64_t> shape)
    : data_(data), dtype_(dtype), rank_(int(shape.size())) {
  SAAP_CHECK_FMT(rank_ <= kMaxRank, InvalidArgument, "rank %d exceeds %d", rank_, kMaxRank);
  int i = 0;
  for (int64_t s : shape) {
    SAAP_CHECK_FMT(s >= 0, InvalidArgument, "shape[%d] = %lld is negative", i, (long long)s);
    shape_[i++] = s;
  }
  int64_t stride = 1;
  for (int d = rank_ - 1; d >= 0; --d) {
    strides_[d] = stride;
    stride *= shape_[d];
  }
}

TensorView::TensorView(void* data, DType dtype, const int64_t* shape, const int64_t* strides, int rank)
    : data_(data), dtype_(dtype), rank_(rank) {
  SAAP_CHECK_FMT(rank >= 0 && rank <= kMaxRank, InvalidArgument, "rank %d is outside [0, %d]", rank, kMaxRank);
  for (int d = 0; d < rank; ++d) {
    SAAP_CHECK_FMT(shape[d] >= 0, InvalidArgument, "shape[%d] = %lld is negative", d, (long long)shape[d]);
    shape_[d] = shape[d];
    strides_[d] = strides[d];
  }
}

int64_t TensorView::dim(int i) const {
  SAAP_CHECK_FMT(i >= 0 && i < rank_, InvalidArgument, "dimension %d of a rank-%d tensor", i, rank_);
  return shape_[i];
}

int64_t TensorView::stride(int i) const {
  SAAP_CHECK_FMT(i >= 0 && i < rank_, InvalidArgument, "dimension %d of a rank-%d tensor", i, rank_);
  return strides_[i];
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int d = 0; d < rank_; ++d) n *= shape_[d];
  return n;
}

bool TensorView::contiguous() const {
  int64_t stride = 1;
  for (int d = rank_ - 1; d >= 0; --d) {
    if (shape_[d] != 1 && strides_[d] != stride) return false;
    stride *= shape_[d];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::string s = "[";
  for (int d = 0; d < rank_; ++d) s += (d ? ", " : "") + std::to_string(shape_[d]);
  return s + "]";
}

float TensorView::at(std::initializer_list<int64_t> index) const {
  SAAP_CHECK_FMT(int(index.size()) == rank_, InvalidArgument, "%zu indices for a rank-%d tensor", index.size(), rank_);
  int64_t offset = 0;
  int d = 0;
  for (int64_t i : index) {
    SAAP_CHECK_FMT(i >= 0 && i < shape_[d], InvalidArgument, "index %lld out of range for dimension %d of %s",
                   (long long)i, d, shape_string().c_str());
    offset += i * strides_[d++];
  }
  return dispatch_dtype(dtype_, [&](auto t) {
    using T = decltype(t);
    return to_float(static_cast<const T*>(data_)[offset]);
  });
}

TensorView TensorView::select(int d, int64_t i) const {
  SAAP_CHECK_FMT(d >= 0 && d < rank_ && i >= 0 && i < shape_[d], InvalidArgument,
                 "select(%d, %lld) on a tensor of shape %s", d, (long long)i, shape_string().c_str());
  TensorView v;
  v.dtype_ = dtype_;
  v.data_ = static_cast<char*>(data_) + i * strides_[d] * int64_t(dtype_size(dtype_));
  for (int k = 0, j = 0; k < rank_; ++k) {
    if (k == d) continue;
    v.shape_[j] = shape_[k];
    v.strides_[j++] = strides_[k];
  }
  v.rank_ = rank_ - 1;
  return v;
}

TensorView TensorView::slice(int d, int64_t begin, int64_t end) const {
  SAAP_CHECK_FMT(d >= 0 && d < rank_ && begin >= 0 && begin <= end && end <= shape_[d], InvalidArgument,
                 "slice(%d, %lld, %lld) on a tensor of shape %s", d, (long long)begin, (long long)end,
                 shape_string().c_str());
  TensorView v = *this;
  v.data_ = static_cast<char*>(data_) + begin * strides_[d] * int64_t(dtype_size(dtype_));
  v.shape_[d] = end - begin;
  return v;
}

void TensorView::check_dtype(DType expected) const {
  SAAP_CHECK_FMT(dtype_ == expected, InvalidArgument, "tensor holds %s, accessed as %s", dtype_name(dtype_),
                 dtype_name(expected));
}

std::shared_ptr<void> aligned_alloc_or_throw(size_t bytes, const char* what) {
  const size_t rounded = (bytes + 63) / 64 * 64;
  void* p = rounded ? std::aligned_alloc(64, rounded) : nullptr;
  SAAP_CHECK_FMT(p || !rounded, OutOfMemory, "cannot allocate %zu bytes for %s", bytes, what);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

Tensor::Tensor(DType dtype, std::initializer_list<int64_t> shape) {
  TensorView shaped(nullptr, dtype, shape);
  storage_ = aligned_alloc_or_throw(size_t(shaped.numel()) * dtype_size(dtype), "tensor");
  view_ = TensorView(storage_.get(), dtype, shape);
}

}  // namespace saap
