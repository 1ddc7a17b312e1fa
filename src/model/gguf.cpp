#include "saap/model/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <limits>
#include <set>

#include "saap/core/error.h"

namespace saap {

namespace {

struct TypeLayout {
  uint32_t type;
  const char* name;
  int64_t block_elems;  // 0: a number ggml defines but whose layout saap does not trust
  size_t block_bytes;
};

// Layouts as in ggml's type traits. Q8_1 is a transient type of matmul kernels, never stored in
// files, and its layout changed over time, so a file claiming it is refused rather than guessed.
constexpr TypeLayout kLayouts[] = {
    {0, "F32", 1, 4},          {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},       {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},       {9, "Q8_1", 0, 0},        {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},    {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},    {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},   {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},    {21, "IQ3_S", 256, 110},  {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136},  {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},         {27, "I64", 1, 8},        {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},    {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},    {39, "MXFP4", 32, 17},
};

const TypeLayout* find_layout(uint32_t type) {
  for (const TypeLayout& l : kLayouts)
    if (l.type == type) return &l;
  return nullptr;
}

constexpr uint64_t kMaxArrayLength = uint64_t(1) << 26;
constexpr uint64_t kMaxTensors = uint64_t(1) << 20;

const char* value_type_name(uint32_t t) {
  static const char* const names[] = {"UINT8", "INT8",   "UINT16", "INT16", "UINT32",
                                      "INT32", "FLOAT32", "BOOL",  "STRING", "ARRAY",
                                      "UINT64", "INT64", "FLOAT64"};
  return t < 13 ? names[t] : "invalid";
}

// Bytes a scalar of this type occupies on disk; 0 for STRING/ARRAY (variable).
size_t scalar_size(GGUFValueType t) {
  switch (t) {
    case GGUFValueType::UINT8: case GGUFValueType::INT8: case GGUFValueType::BOOL: return 1;
    case GGUFValueType::UINT16: case GGUFValueType::INT16: return 2;
    case GGUFValueType::UINT32: case GGUFValueType::INT32: case GGUFValueType::FLOAT32: return 4;
    case GGUFValueType::UINT64: case GGUFValueType::INT64: case GGUFValueType::FLOAT64: return 8;
    default: return 0;
  }
}

bool is_integer(GGUFValueType t) {
  return t != GGUFValueType::FLOAT32 && t != GGUFValueType::FLOAT64 &&
         t != GGUFValueType::STRING && t != GGUFValueType::ARRAY;
}

// A bounds-checked cursor over the file. Every read checks the remaining bytes first, so a
// truncated or lying file fails here with the field name and offset instead of reading past the end.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  size_t size() const { return size_; }

  template <typename T>
  T read(const char* field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(const char* field) {
    const size_t at = pos_;
    const uint64_t len = read<uint64_t>(field);
    SAAP_CHECK_FMT(len <= remaining(), BadFile,
                   "%s: string length %llu at offset %zu exceeds the %zu bytes left in the file",
                   field, (unsigned long long)len, at, remaining());
    std::string s(reinterpret_cast<const char*>(data_ + pos_), static_cast<size_t>(len));
    pos_ += static_cast<size_t>(len);
    return s;
  }

  void need(size_t n, const char* field) const {
    SAAP_CHECK_FMT(n <= remaining(), BadFile,
                   "%s at offset %zu: needs %zu bytes but the file ends at %zu (truncated?)", field,
                   pos_, n, size_);
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

int64_t read_integer(Reader& r, GGUFValueType t, const std::string& key) {
  const char* f = key.c_str();
  switch (t) {
    case GGUFValueType::UINT8: return r.read<uint8_t>(f);
    case GGUFValueType::INT8: return r.read<int8_t>(f);
    case GGUFValueType::UINT16: return r.read<uint16_t>(f);
    case GGUFValueType::INT16: return r.read<int16_t>(f);
    case GGUFValueType::UINT32: return r.read<uint32_t>(f);
    case GGUFValueType::INT32: return r.read<int32_t>(f);
    case GGUFValueType::UINT64: return static_cast<int64_t>(r.read<uint64_t>(f));
    case GGUFValueType::INT64: return r.read<int64_t>(f);
    case GGUFValueType::BOOL: {
      const size_t at = r.pos();
      const uint8_t b = r.read<uint8_t>(f);
      SAAP_CHECK_FMT(b <= 1, BadFile, "metadata '%s': bool at offset %zu has value %u (not 0 or 1)",
                     f, at, b);
      return b;
    }
    default: SAAP_THROW_FMT(BadFile, "metadata '%s': type %u is not an integer", f, (unsigned)t);
  }
}

double read_float(Reader& r, GGUFValueType t, const std::string& key) {
  if (t == GGUFValueType::FLOAT32) return r.read<float>(key.c_str());
  return r.read<double>(key.c_str());
}

GGUFValueType read_value_type(Reader& r, const std::string& key, const char* what) {
  const size_t at = r.pos();
  const uint32_t t = r.read<uint32_t>(what);
  SAAP_CHECK_FMT(t <= static_cast<uint32_t>(GGUFValueType::FLOAT64), BadFile,
                 "metadata '%s': %s %u at offset %zu is not a GGUF value type (0..12)", key.c_str(),
                 what, t, at);
  return static_cast<GGUFValueType>(t);
}

GGUFValue read_value(Reader& r, const std::string& key) {
  GGUFValue v;
  v.type = read_value_type(r, key, "value type");
  if (v.type == GGUFValueType::STRING) {
    v.s = r.read_string(key.c_str());
  } else if (v.type == GGUFValueType::FLOAT32 || v.type == GGUFValueType::FLOAT64) {
    v.f = read_float(r, v.type, key);
  } else if (v.type != GGUFValueType::ARRAY) {
    v.i = read_integer(r, v.type, key);
  } else {
    const size_t type_at = r.pos();
    v.array_type = read_value_type(r, key, "array element type");
    SAAP_CHECK_FMT(v.array_type != GGUFValueType::ARRAY, Unsupported,
                   "metadata '%s': array of arrays at offset %zu (nested arrays are not supported)",
                   key.c_str(), type_at);
    const size_t count_at = r.pos();
    const uint64_t n = r.read<uint64_t>("array length");
    // Each element takes at least this many bytes, so a count the file cannot hold is refused
    // before anything is allocated for it.
    const size_t min_elem =
        v.array_type == GGUFValueType::STRING ? sizeof(uint64_t) : scalar_size(v.array_type);
    SAAP_CHECK_FMT(n <= r.remaining() / min_elem, BadFile,
                   "metadata '%s': array length %llu at offset %zu cannot fit in the %zu bytes "
                   "left in the file (%s elements take at least %zu bytes each)",
                   key.c_str(), (unsigned long long)n, count_at, r.remaining(),
                   value_type_name(static_cast<uint32_t>(v.array_type)), min_elem);
    // Widening (a u8 becomes an int64) would let a huge, well-formed array of a multi-GB file
    // take several times the file's size in memory; real vocabularies are far below this cap.
    SAAP_CHECK_FMT(n <= kMaxArrayLength, BadFile,
                   "metadata '%s': array length %llu at offset %zu exceeds saap's limit of %llu",
                   key.c_str(), (unsigned long long)n, count_at, (unsigned long long)kMaxArrayLength);
    const size_t count = static_cast<size_t>(n);
    // Reserved up front only up to a modest size: a lying count then fails on the file's end
    // before memory grows much past what the file really holds.
    const size_t reserve = std::min<size_t>(count, size_t(1) << 16);
    if (v.array_type == GGUFValueType::STRING) {
      v.strings.reserve(reserve);
      for (size_t k = 0; k < count; ++k) v.strings.push_back(r.read_string(key.c_str()));
    } else if (v.array_type == GGUFValueType::FLOAT32 || v.array_type == GGUFValueType::FLOAT64) {
      v.floats.reserve(reserve);
      for (size_t k = 0; k < count; ++k) v.floats.push_back(read_float(r, v.array_type, key));
    } else {
      v.ints.reserve(reserve);
      for (size_t k = 0; k < count; ++k) v.ints.push_back(read_integer(r, v.array_type, key));
    }
  }
  return v;
}

GGUFTensorInfo read_tensor_info(Reader& r, size_t index, size_t* offset_at) {
  GGUFTensorInfo t;
  const size_t start = r.pos();
  t.name = r.read_string("tensor name");
  const char* name = t.name.c_str();
  const size_t dims_at = r.pos();
  const uint32_t n_dims = r.read<uint32_t>("tensor dims count");
  SAAP_CHECK_FMT(n_dims >= 1 && n_dims <= 4, BadFile,
                 "tensor %zu '%s' (info at offset %zu): dims count %u at offset %zu is not in 1..4",
                 index, name, start, n_dims, dims_at);
  int64_t numel = 1;
  for (uint32_t d = 0; d < n_dims; ++d) {
    const size_t at = r.pos();
    const uint64_t dim = r.read<uint64_t>("tensor dim");
    SAAP_CHECK_FMT(dim >= 1 && dim <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                   BadFile, "tensor '%s': dim %u = %llu at offset %zu is not positive", name, d,
                   (unsigned long long)dim, at);
    SAAP_CHECK_FMT(!__builtin_mul_overflow(numel, static_cast<int64_t>(dim), &numel), BadFile,
                   "tensor '%s': element count overflows int64 at dim %u (offset %zu)", name, d, at);
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  const size_t type_at = r.pos();
  const uint32_t type = r.read<uint32_t>("tensor type");
  const TypeLayout* layout = find_layout(type);
  SAAP_CHECK_FMT(layout != nullptr, BadFile,
                 "tensor '%s': type %u at offset %zu is not a ggml type", name, type, type_at);
  SAAP_CHECK_FMT(layout->block_elems > 0, Unsupported,
                 "tensor '%s': type %s at offset %zu is not a storage type saap can read", name,
                 layout->name, type_at);
  t.type = static_cast<GGMLType>(type);
  SAAP_CHECK_FMT(t.shape[0] % layout->block_elems == 0, BadFile,
                 "tensor '%s': row length %lld is not a multiple of the %s block size %lld", name,
                 (long long)t.shape[0], layout->name, (long long)layout->block_elems);
  const uint64_t blocks = static_cast<uint64_t>(numel / layout->block_elems);
  SAAP_CHECK_FMT(!__builtin_mul_overflow(blocks, static_cast<uint64_t>(layout->block_bytes),
                                         &t.n_bytes),
                 BadFile, "tensor '%s': byte size of %lld %s elements overflows", name,
                 (long long)numel, layout->name);
  *offset_at = r.pos();
  t.offset = r.read<uint64_t>("tensor data offset");
  return t;
}

}  // namespace

const char* ggml_type_name(GGMLType t) {
  const TypeLayout* l = find_layout(static_cast<uint32_t>(t));
  if (l) return l->name;
  // Names of unknown numbers outlive the call: the error messages that print them are formatted
  // at once, but a caller may keep the pointer, so they are interned.
  static thread_local std::set<std::string> unknown;
  return unknown.insert("type#" + std::to_string(static_cast<uint32_t>(t))).first->c_str();
}

bool ggml_type_layout(uint32_t type, int64_t* block_elems, size_t* block_bytes) {
  const TypeLayout* l = find_layout(type);
  if (!l || l->block_elems == 0) return false;
  *block_elems = l->block_elems;
  *block_bytes = l->block_bytes;
  return true;
}

int64_t GGUFTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

GGUFFile GGUFFile::parse(const uint8_t* data, size_t size) {
  SAAP_CHECK_FMT(data != nullptr || size == 0, InvalidArgument, "data is null with size %zu", size);
  Reader r(data, size);
  GGUFFile f;
  r.need(4, "magic");
  SAAP_CHECK_FMT(std::memcmp(data, "GGUF", 4) == 0, BadFile,
                 "magic at offset 0 is %02x %02x %02x %02x, not \"GGUF\"", data[0], data[1],
                 data[2], data[3]);
  r.read<uint32_t>("magic");
  f.version_ = r.read<uint32_t>("version");
  // A big-endian file stores version 3 as 0x03000000.
  SAAP_CHECK_FMT((f.version_ & 0xFFFF) != 0 || f.version_ == 0, Unsupported,
                 "version field at offset 4 is 0x%08x: a big-endian GGUF file, which saap does "
                 "not read", f.version_);
  SAAP_CHECK_FMT(f.version_ == 2 || f.version_ == 3, Unsupported,
                 "version %u at offset 4 is not supported (only GGUF v2 and v3)", f.version_);
  const uint64_t n_tensors = r.read<uint64_t>("tensor count");
  const uint64_t n_kv = r.read<uint64_t>("metadata count");
  // Smallest encodings: a key/value is an 8-byte key length, a 4-byte type and a 1-byte value;
  // a tensor info an 8-byte name length, 4-byte dims count, one 8-byte dim, 4-byte type and
  // 8-byte offset. Counts the file cannot hold are refused before anything is reserved.
  SAAP_CHECK_FMT(n_kv <= r.remaining() / 13, BadFile,
                 "metadata count %llu at offset 16 cannot fit in the %zu bytes left in the file",
                 (unsigned long long)n_kv, r.remaining());
  SAAP_CHECK_FMT(n_tensors <= r.remaining() / 32 && n_tensors <= kMaxTensors, BadFile,
                 "tensor count %llu at offset 8 cannot fit in the %zu bytes left in the file "
                 "(or exceeds saap's limit of %llu)",
                 (unsigned long long)n_tensors, r.remaining(), (unsigned long long)kMaxTensors);

  for (uint64_t k = 0; k < n_kv; ++k) {
    const size_t at = r.pos();
    std::string key = r.read_string("metadata key");
    SAAP_CHECK_FMT(f.metadata_.count(key) == 0, BadFile,
                   "metadata key '%s' at offset %zu appears twice", key.c_str(), at);
    GGUFValue value = read_value(r, key);
    f.metadata_.emplace(std::move(key), std::move(value));
  }

  auto align = f.metadata_.find("general.alignment");
  if (align != f.metadata_.end()) {
    const GGUFValue& a = align->second;
    SAAP_CHECK_FMT(a.type == GGUFValueType::UINT32, BadFile,
                   "metadata 'general.alignment' has type %s, expected UINT32",
                   value_type_name(static_cast<uint32_t>(a.type)));
    SAAP_CHECK_FMT(a.i > 0 && (a.i & (a.i - 1)) == 0, BadFile,
                   "metadata 'general.alignment' = %lld is not a positive power of two",
                   (long long)a.i);
    f.alignment_ = static_cast<size_t>(a.i);
  }

  f.tensors_.reserve(static_cast<size_t>(n_tensors));
  std::vector<size_t> offset_at(static_cast<size_t>(n_tensors));
  std::set<std::string> names;
  for (uint64_t k = 0; k < n_tensors; ++k) {
    const size_t at = r.pos();
    GGUFTensorInfo t = read_tensor_info(r, static_cast<size_t>(k), &offset_at[k]);
    SAAP_CHECK_FMT(names.insert(t.name).second, BadFile,
                   "tensor '%s' (info at offset %zu) appears twice", t.name.c_str(), at);
    f.tensors_.push_back(std::move(t));
  }

  // The data section starts at the next multiple of the alignment after the tensor infos.
  const uint64_t pos = r.pos();
  f.data_offset_ = (pos + f.alignment_ - 1) / f.alignment_ * f.alignment_;
  for (size_t k = 0; k < f.tensors_.size(); ++k) {
    GGUFTensorInfo& t = f.tensors_[k];
    SAAP_CHECK_FMT(t.offset % f.alignment_ == 0, BadFile,
                   "tensor '%s': data offset %llu (field at offset %zu) is not a multiple of the "
                   "alignment %zu",
                   t.name.c_str(), (unsigned long long)t.offset, offset_at[k], f.alignment_);
    const uint64_t avail = f.data_offset_ <= size ? size - f.data_offset_ : 0;
    SAAP_CHECK_FMT(t.offset <= avail && t.n_bytes <= avail - t.offset, BadFile,
                   "tensor '%s': data offset %llu (field at offset %zu) + size %llu exceeds the "
                   "file size %zu (data section starts at %llu)",
                   t.name.c_str(), (unsigned long long)t.offset, offset_at[k],
                   (unsigned long long)t.n_bytes, size, (unsigned long long)f.data_offset_);
    t.data = data + f.data_offset_ + t.offset;
  }
  return f;
}

GGUFFile GGUFFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  SAAP_CHECK_FMT(fd >= 0, NotFound, "cannot open GGUF file '%s': %s", path.c_str(),
                 std::strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    SAAP_THROW_FMT(BadFile, "'%s' is not a regular file", path.c_str());
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    SAAP_THROW_FMT(BadFile, "GGUF file '%s' is empty", path.c_str());
  }
  void* base = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  SAAP_CHECK_FMT(base != MAP_FAILED, BadFile, "cannot map GGUF file '%s' (%zu bytes): %s",
                 path.c_str(), size, std::strerror(map_errno));
  std::shared_ptr<void> mapping(base, [size](void* p) { munmap(p, size); });
  try {
    GGUFFile f = parse(static_cast<const uint8_t*>(base), size);
    f.mapping_ = std::move(mapping);
    f.path_ = path;
    return f;
  } catch (const Error& e) {
    throw Error(e.kind(), path + ": " + e.what());
  }
}

const GGUFValue& GGUFFile::get(const std::string& key) const {
  auto it = metadata_.find(key);
  SAAP_CHECK_FMT(it != metadata_.end(), BadFile, "metadata key '%s' is missing from '%s'",
                 key.c_str(), path_.c_str());
  return it->second;
}

int64_t GGUFFile::get_int(const std::string& key) const {
  const GGUFValue& v = get(key);
  SAAP_CHECK_FMT(is_integer(v.type), BadFile, "metadata '%s' has type %s, expected an integer",
                 key.c_str(), value_type_name(static_cast<uint32_t>(v.type)));
  SAAP_CHECK_FMT(v.type != GGUFValueType::UINT64 || v.i >= 0, BadFile,
                 "metadata '%s' = %llu does not fit in int64", key.c_str(),
                 (unsigned long long)v.i);
  return v.i;
}

int64_t GGUFFile::get_int(const std::string& key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

double GGUFFile::get_float(const std::string& key) const {
  const GGUFValue& v = get(key);
  if (v.type == GGUFValueType::FLOAT32 || v.type == GGUFValueType::FLOAT64) return v.f;
  return static_cast<double>(get_int(key));
}

double GGUFFile::get_float(const std::string& key, double fallback) const {
  return has(key) ? get_float(key) : fallback;
}

const std::string& GGUFFile::get_string(const std::string& key) const {
  const GGUFValue& v = get(key);
  SAAP_CHECK_FMT(v.type == GGUFValueType::STRING, BadFile,
                 "metadata '%s' has type %s, expected STRING", key.c_str(),
                 value_type_name(static_cast<uint32_t>(v.type)));
  return v.s;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
  for (const GGUFTensorInfo& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const GGUFTensorInfo& GGUFFile::tensor(const std::string& name) const {
  const GGUFTensorInfo* t = find_tensor(name);
  SAAP_CHECK_FMT(t != nullptr, BadFile, "tensor '%s' is missing from '%s'", name.c_str(),
                 path_.c_str());
  return *t;
}

}  // namespace saap
