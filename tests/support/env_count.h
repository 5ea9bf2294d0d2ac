// A count a test reads from the environment (SAG_POWERCUT_CUTS, SAG_DPI_KILLS):
// unset gives the default; a value that is not a whole positive count stops
// the test program with its name, so that a typo cannot turn a campaign into
// zero trials that pass.
#pragma once

#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <system_error>

namespace sag::test {

inline int EnvCount(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  int n = 0;
  const char* last = value + std::strlen(value);
  const auto [end, ec] = std::from_chars(value, last, n);
  if (ec != std::errc() || end != last || n <= 0) {
    std::fprintf(stderr, "%s='%s' is not a positive count: unset it or give a number\n", name,
                 value);
    std::exit(2);
  }
  return n;
}

}  // namespace sag::test
