// Option checks whose messages a user can act on: "not a number" when the value does not parse,
// and the range in plain numbers. CLI11's PositiveNumber and NonNegativeNumber print the largest
// double (310 digits) as their bound, and its Range says "not in range" for "abc".
#pragma once
#include <CLI/CLI.hpp>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace saap::cli {

namespace detail {

inline std::string number_text(double v) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%.15g", v);
  return buffer;
}

// "at least 1", "more than 0", "from 0 to 1": what the user may give.
inline std::string description_of(double lo, double hi, bool lo_open) {
  if (hi == HUGE_VAL || hi == 2147483647.0)
    return (lo_open ? "it must be more than " : "it must be at least ") + number_text(lo);
  return "it must be from " + number_text(lo) + " to " + number_text(hi);
}

// How --help shows a lower bound after the type: INT:POSITIVE=48.
inline std::string lower_bound_text(double lo, bool whole) {
  return lo == 0 ? "NONNEGATIVE" : (whole && lo == 1) ? "POSITIVE" : "AT LEAST " + number_text(lo);
}

// Parses the whole of `text` as a finite number; false when it is not one.
inline bool parse_number(const std::string& text, double* value) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  *value = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && errno != ERANGE && std::isfinite(*value);
}

// lo_open: lo itself is refused. whole: the value must be an integer (the option is one).
inline CLI::Validator bounded(double lo, double hi, bool lo_open, bool whole, std::string description) {
  return CLI::Validator(
      [=](std::string& text) -> std::string {
        double v = 0;
        if (!parse_number(text, &v)) return "'" + text + "' is not a number";
        if (whole && v != std::floor(v)) return text + " is not a whole number";
        if (lo_open ? v <= lo : v < lo) return text + " is too small: " + description_of(lo, hi, lo_open);
        if (v > hi)
          return text + " is too large: " +
                 (hi == 2147483647.0 ? "it must be at most " + number_text(hi) : description_of(lo, hi, lo_open));
        return {};
      },
      std::move(description));
}

}  // namespace detail

// A whole number >= lo (counts, lengths; ints hold at most 2^31 - 1).
inline CLI::Validator whole_at_least(double lo) {
  return detail::bounded(lo, 2147483647.0, false, true, detail::lower_bound_text(lo, true));
}
// A whole number in [lo, hi].
inline CLI::Validator whole_in_range(double lo, double hi) {
  return detail::bounded(lo, hi, false, true, "[" + detail::number_text(lo) + ", " + detail::number_text(hi) + "]");
}
// A number >= lo.
inline CLI::Validator at_least(double lo) {
  return detail::bounded(lo, HUGE_VAL, false, false, detail::lower_bound_text(lo, false));
}
// A number > lo.
inline CLI::Validator above(double lo) {
  return detail::bounded(lo, HUGE_VAL, true, false, lo == 0 ? "POSITIVE" : "ABOVE " + detail::number_text(lo));
}
// Any number; the range is the library's to check (the budget fractions: registry.h).
inline CLI::Validator a_number() { return detail::bounded(-HUGE_VAL, HUGE_VAL, false, false, ""); }
// A number in [lo, hi].
inline CLI::Validator in_range(double lo, double hi) {
  return detail::bounded(lo, hi, false, false, "[" + detail::number_text(lo) + ", " + detail::number_text(hi) + "]");
}

}  // namespace saap::cli
