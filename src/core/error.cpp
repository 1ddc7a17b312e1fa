#include "saap/core/error.h"

#include <cstdarg>
#include <cstdio>
#include <vector>

namespace saap {

std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  va_list copy;
  va_copy(copy, args);
  const int size = std::vsnprintf(nullptr, 0, fmt, copy);
  va_end(copy);
  std::vector<char> buffer(size > 0 ? size + 1 : 1);
  std::vsnprintf(buffer.data(), buffer.size(), fmt, args);
  va_end(args);
  return std::string(buffer.data(), size > 0 ? size : 0);
}

void throw_error(ErrorKind kind, const std::string& message) { throw Error(kind, message); }

}  // namespace saap
