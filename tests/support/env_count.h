// A count a test reads from the environment (SAG_POWERCUT_CUTS, SAG_DPI_KILLS):
// unset gives the default; a value that is not a whole positive count stops
// the test program with its name, so that a typo cannot turn a campaign into
// zero trials that pass.
#pragma once

#include <cstdio>
#include <cstdlib>

#include "common/parse_decimal.h"

namespace sag::test {

inline int EnvCount(const char* name, int fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr) return fallback;
  const auto n = ParseDecimal<int>(value);
  if (!n || *n <= 0) {
    std::fprintf(stderr, "%s='%s' is not a positive count: unset it or give a number\n", name,
                 value);
    std::exit(2);
  }
  return *n;
}

}  // namespace sag::test
