// Dequantization of ggml block formats to fp32. Each block holds its own scale(s) in fp16 (fp32
// for Q8_K) followed by packed integer codes; the layouts follow ggml's block_* structs. The
// arithmetic order (scale products first, then code * scale - min) matches ggml's reference
// dequantizers so results are bit-identical without FMA contraction.
#include <cstring>

#include "saap/core/dtype.h"
#include "saap/core/error.h"
#include "saap/model/gguf.h"

namespace saap {

namespace {

constexpr int QK = 32;    // block size of the legacy quants
constexpr int QK_K = 256; // super-block size of the k-quants

inline float load_half(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return to_float(f16{h});
}

void dq_f32(const uint8_t* x, float* y, int64_t n) { std::memcpy(y, x, n * sizeof(float)); }

void dq_f16(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = load_half(x + 2 * i);
}

void dq_bf16(const uint8_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, x + 2 * i, 2);
    y[i] = to_float(bf16{h});
  }
}

// Q4_0: d, 16 bytes of nibbles; low nibbles are elements 0..15, high nibbles 16..31; code - 8.
void dq_q4_0(const uint8_t* x, float* y) {
  const float d = load_half(x);
  const uint8_t* qs = x + 2;
  for (int j = 0; j < QK / 2; ++j) {
    y[j] = static_cast<float>((qs[j] & 0x0F) - 8) * d;
    y[j + QK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
  }
}

// Q4_1: d, m, nibbles as Q4_0; value = code * d + m.
void dq_q4_1(const uint8_t* x, float* y) {
  const float d = load_half(x), m = load_half(x + 2);
  const uint8_t* qs = x + 4;
  for (int j = 0; j < QK / 2; ++j) {
    y[j] = static_cast<float>(qs[j] & 0x0F) * d + m;
    y[j + QK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
  }
}

// Q5_0/Q5_1: as Q4_0/Q4_1 with a fifth bit per element in a 32-bit mask (bit j for element j).
void dq_q5_0(const uint8_t* x, float* y) {
  const float d = load_half(x);
  uint32_t qh;
  std::memcpy(&qh, x + 2, 4);
  const uint8_t* qs = x + 6;
  for (int j = 0; j < QK / 2; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo - 16) * d;
    y[j + QK / 2] = static_cast<float>(hi - 16) * d;
  }
}

void dq_q5_1(const uint8_t* x, float* y) {
  const float d = load_half(x), m = load_half(x + 2);
  uint32_t qh;
  std::memcpy(&qh, x + 4, 4);
  const uint8_t* qs = x + 8;
  for (int j = 0; j < QK / 2; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = static_cast<float>(lo) * d + m;
    y[j + QK / 2] = static_cast<float>(hi) * d + m;
  }
}

void dq_q8_0(const uint8_t* x, float* y) {
  const float d = load_half(x);
  const int8_t* qs = reinterpret_cast<const int8_t*>(x + 2);
  for (int j = 0; j < QK; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K: 16 bytes of (min << 4 | scale) per 16 elements, 64 bytes of 2-bit codes, d, dmin.
// Each 32-byte run of codes serves 4 groups of 32 elements, one bit pair per group.
void dq_q2_k(const uint8_t* x, float* y) {
  const uint8_t* scales = x;
  const uint8_t* qs = x + 16;
  const float d = load_half(x + 80), dmin = load_half(x + 82);
  int is = 0;
  for (int half = 0; half < 2; ++half, qs += 32) {
    for (int shift = 0; shift < 8; shift += 2) {
      for (int part = 0; part < 2; ++part) {
        const uint8_t sc = scales[is++];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        for (int l = 0; l < 16; ++l)
          *y++ = dl * static_cast<float>((qs[l + 16 * part] >> shift) & 3) - ml;
      }
    }
  }
}

// Q3_K: 32-byte high-bit mask, 64 bytes of 2-bit codes, 12 bytes of 6-bit signed scales, d.
// Scale j: low 4 bits from byte j (j < 8) or the high nibble of byte j-8, top 2 bits from byte
// 8 + j%4 at bit 2*(j/4); value = (scale - 32) * d * (code - (mask bit set ? 0 : 4)).
void dq_q3_k(const uint8_t* x, float* y) {
  const uint8_t* hmask = x;
  const uint8_t* qs = x + 32;
  const uint8_t* sc = x + 96;
  const float d = load_half(x + 108);
  int scale[16];
  for (int j = 0; j < 16; ++j) {
    const int low = j < 8 ? (sc[j] & 0x0F) : (sc[j - 8] >> 4);
    const int high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
    scale[j] = (low | (high << 4)) - 32;
  }
  int is = 0;
  uint8_t m = 1;
  for (int half = 0; half < 2; ++half, qs += 32) {
    for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
      for (int part = 0; part < 2; ++part) {
        const float dl = d * static_cast<float>(scale[is++]);
        for (int l = 16 * part; l < 16 * part + 16; ++l) {
          const int q = ((qs[l] >> shift) & 3) - ((hmask[l] & m) ? 0 : 4);
          *y++ = dl * static_cast<float>(q);
        }
      }
    }
  }
}

// The 6-bit scale and min of sub-block j in the 12-byte packing shared by Q4_K and Q5_K: the first
// four pairs sit in the low 6 bits of bytes 0..7, the last four are split between bytes 8..11
// (low bits) and the top 2 bits of bytes 0..7.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
  if (j < 4) {
    *sc = q[j] & 63;
    *mn = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
    *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Q4_K: d, dmin, 12 bytes of scales/mins, 128 bytes of nibbles; each 32-byte run gives 64
// elements: low nibbles with sub-block 2i, high nibbles with sub-block 2i+1.
void dq_q4_k(const uint8_t* x, float* y) {
  const float d = load_half(x), dmin = load_half(x + 2);
  const uint8_t* scales = x + 4;
  const uint8_t* qs = x + 16;
  for (int is = 0; is < 8; is += 2, qs += 32) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(qs[l] & 0x0F) - m1;
    for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(qs[l] >> 4) - m2;
  }
}

// Q5_K: Q4_K plus a 32-byte mask holding the fifth bit (bit 2i / 2i+1 for the run's two halves).
void dq_q5_k(const uint8_t* x, float* y) {
  const float d = load_half(x), dmin = load_half(x + 2);
  const uint8_t* scales = x + 4;
  const uint8_t* qh = x + 16;
  const uint8_t* qs = x + 48;
  uint8_t u1 = 1, u2 = 2;
  for (int is = 0; is < 8; is += 2, qs += 32, u1 <<= 2, u2 <<= 2) {
    uint8_t sc, mn;
    scale_min_k4(is, scales, &sc, &mn);
    const float d1 = d * sc, m1 = dmin * mn;
    scale_min_k4(is + 1, scales, &sc, &mn);
    const float d2 = d * sc, m2 = dmin * mn;
    for (int l = 0; l < 32; ++l)
      *y++ = d1 * static_cast<float>((qs[l] & 0x0F) + ((qh[l] & u1) ? 16 : 0)) - m1;
    for (int l = 0; l < 32; ++l)
      *y++ = d2 * static_cast<float>((qs[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
  }
}

// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit highs, 16 signed 8-bit scales, d. Each half
// of 128 elements uses 64 low-nibble bytes and 32 high bytes; code - 32.
void dq_q6_k(const uint8_t* x, float* y) {
  const uint8_t* ql = x;
  const uint8_t* qh = x + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
  const float d = load_half(x + 208);
  for (int half = 0; half < 2; ++half, ql += 64, qh += 32, sc += 8, y += 128) {
    for (int l = 0; l < 32; ++l) {
      const int is = l / 16;
      const int q1 = ((ql[l] & 0x0F) | (((qh[l] >> 0) & 3) << 4)) - 32;
      const int q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32;
      const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
      const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
      y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
      y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
      y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
      y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
    }
  }
}

// Q8_K: fp32 d, 256 int8 codes, then 16 int16 block sums used only by matmul kernels.
void dq_q8_k(const uint8_t* x, float* y) {
  float d;
  std::memcpy(&d, x, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(x + 4);
  for (int j = 0; j < QK_K; ++j) y[j] = d * static_cast<float>(qs[j]);
}

using BlockFn = void (*)(const uint8_t*, float*);

BlockFn block_fn(GGMLType t) {
  switch (t) {
    case GGMLType::Q4_0: return dq_q4_0;
    case GGMLType::Q4_1: return dq_q4_1;
    case GGMLType::Q5_0: return dq_q5_0;
    case GGMLType::Q5_1: return dq_q5_1;
    case GGMLType::Q8_0: return dq_q8_0;
    case GGMLType::Q2_K: return dq_q2_k;
    case GGMLType::Q3_K: return dq_q3_k;
    case GGMLType::Q4_K: return dq_q4_k;
    case GGMLType::Q5_K: return dq_q5_k;
    case GGMLType::Q6_K: return dq_q6_k;
    case GGMLType::Q8_K: return dq_q8_k;
    default: return nullptr;
  }
}

bool is_float_type(GGMLType t) {
  return t == GGMLType::F32 || t == GGMLType::F16 || t == GGMLType::BF16;
}

}  // namespace

bool ggml_can_dequantize(GGMLType t) { return is_float_type(t) || block_fn(t) != nullptr; }

int64_t ggml_block_elems(GGMLType t) {
  int64_t elems;
  size_t bytes;
  SAAP_CHECK_FMT(ggml_can_dequantize(t) && ggml_type_layout(static_cast<uint32_t>(t), &elems, &bytes),
                 Unsupported, "ggml type %s cannot be dequantized by saap", ggml_type_name(t));
  return elems;
}

size_t ggml_block_bytes(GGMLType t) {
  int64_t elems;
  size_t bytes;
  SAAP_CHECK_FMT(ggml_can_dequantize(t) && ggml_type_layout(static_cast<uint32_t>(t), &elems, &bytes),
                 Unsupported, "ggml type %s cannot be dequantized by saap", ggml_type_name(t));
  return bytes;
}

void dequantize(GGMLType type, const void* src, float* dst, int64_t n) {
  const int64_t qk = ggml_block_elems(type);
  SAAP_CHECK_FMT(n >= 0 && n % qk == 0, InvalidArgument,
                 "element count %lld is not a multiple of the %s block size %lld", (long long)n,
                 ggml_type_name(type), (long long)qk);
  if (n == 0) return;
  SAAP_CHECK_FMT(src != nullptr && dst != nullptr, InvalidArgument,
                 "null %s pointer for %lld elements", src ? "dst" : "src", (long long)n);
  const uint8_t* x = static_cast<const uint8_t*>(src);
  switch (type) {
    case GGMLType::F32: return dq_f32(x, dst, n);
    case GGMLType::F16: return dq_f16(x, dst, n);
    case GGMLType::BF16: return dq_bf16(x, dst, n);
    default: break;
  }
  const BlockFn fn = block_fn(type);
  const size_t bytes = ggml_block_bytes(type);
  const int64_t blocks = n / qk;
  for (int64_t b = 0; b < blocks; ++b) fn(x + b * bytes, dst + b * qk);
}

std::vector<float> dequantize_tensor(const GGUFTensorInfo& tensor) {
  SAAP_CHECK_FMT(ggml_can_dequantize(tensor.type), Unsupported,
                 "tensor '%s' has type %s, which saap cannot dequantize", tensor.name.c_str(),
                 ggml_type_name(tensor.type));
  const int64_t n = tensor.numel();
  const int64_t qk = ggml_block_elems(tensor.type);
  SAAP_CHECK_FMT(n % qk == 0 && static_cast<uint64_t>(n / qk) * ggml_block_bytes(tensor.type) ==
                                    tensor.n_bytes,
                 InvalidArgument, "tensor '%s': %lld %s elements do not match its %llu bytes",
                 tensor.name.c_str(), (long long)n, ggml_type_name(tensor.type),
                 (unsigned long long)tensor.n_bytes);
  std::vector<float> out(static_cast<size_t>(n));
  dequantize(tensor.type, tensor.data, out.data(), n);
  return out;
}

}  // namespace saap
