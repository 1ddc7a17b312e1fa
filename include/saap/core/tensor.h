// Non-owning strided views over typed memory, and an owning Tensor that hands them out.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>

#include "saap/core/dtype.h"

namespace saap {

constexpr int kMaxRank = 4;

class TensorView {
 public:
  TensorView() = default;
  // Contiguous, row-major.
  TensorView(void* data, DType dtype, std::initializer_list<int64_t> shape);
  TensorView(void* data, DType dtype, const int64_t* shape, const int64_t* strides, int rank);

  int rank() const { return rank_; }
  int64_t dim(int i) const;
  int64_t stride(int i) const;  // in elements
  int64_t numel() const;
  DType dtype() const { return dtype_; }
  bool contiguous() const;
  std::string shape_string() const;  // "[2, 3, 64]"

  void* raw() const { return data_; }
  template <class T>
  T* data() const {
    check_dtype(dtype_of<T>());
    return static_cast<T*>(data_);
  }
  // Element access as float, for tests and slow paths.
  float at(std::initializer_list<int64_t> index) const;

  // The sub-view with index `i` along dimension `d` removed (rank - 1).
  TensorView select(int d, int64_t i) const;
  // The sub-view of [begin, end) along dimension `d`.
  TensorView slice(int d, int64_t begin, int64_t end) const;

 private:
  void check_dtype(DType expected) const;
  void* data_ = nullptr;
  DType dtype_ = DType::F32;
  int rank_ = 0;
  std::array<int64_t, kMaxRank> shape_{};
  std::array<int64_t, kMaxRank> strides_{};
};

// Owns 64-byte aligned storage; the allocation failure is reported as ErrorKind::OutOfMemory.
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, std::initializer_list<int64_t> shape);
  TensorView view() const { return view_; }
  template <class T>
  T* data() const {
    return view_.data<T>();
  }
  int64_t numel() const { return view_.numel(); }

 private:
  std::shared_ptr<void> storage_;
  TensorView view_;
};

// Throws OutOfMemory naming `what` and the size when the allocation fails.
std::shared_ptr<void> aligned_alloc_or_throw(size_t bytes, const char* what);

}  // namespace saap
