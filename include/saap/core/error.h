// Errors raised at API edges. Every message names the offending field or argument and its value,
// so a user can fix the input without reading the code (FAISS_THROW_IF_NOT_FMT style).
#pragma once
#include <stdexcept>
#include <string>

namespace saap {

// What went wrong, in the terms a caller acts on; the CLI maps each to its own exit code.
enum class ErrorKind {
  InvalidArgument = 2,  // a parameter or shape the caller passed is wrong
  BadFile = 3,          // a file (GGUF, artifact, text) is malformed, truncated or mismatched
  NotFound = 4,         // a file or model could not be located
  NonFinite = 5,        // NaN or Inf reached a computation that would silently propagate it
  OutOfMemory = 6,      // an allocation failed
  Unsupported = 7,      // valid input that this build cannot handle (a quant type, a head dim)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The message is what the user reads (the CLI prints it after "saap: error: "): it names the
// input, not the function that found the fault.
[[noreturn]] void throw_error(ErrorKind kind, const std::string& message);

}  // namespace saap

#define SAAP_THROW_FMT(kind, fmt, ...) \
  ::saap::throw_error(::saap::ErrorKind::kind, ::saap::format(fmt, __VA_ARGS__))
#define SAAP_THROW_MSG(kind, msg) ::saap::throw_error(::saap::ErrorKind::kind, msg)
#define SAAP_CHECK_FMT(cond, kind, fmt, ...)     \
  do {                                           \
    if (!(cond)) SAAP_THROW_FMT(kind, fmt, __VA_ARGS__); \
  } while (0)
#define SAAP_CHECK_MSG(cond, kind, msg)   \
  do {                                    \
    if (!(cond)) SAAP_THROW_MSG(kind, msg); \
  } while (0)
