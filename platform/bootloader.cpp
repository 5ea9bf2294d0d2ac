#include "platform/bootloader.h"

#include <cstdio>
#include <sstream>

namespace sag::platform {

namespace {

// U-Boot's `test A -gt B` reads numbers with simple_strtol(s, NULL, 10): the
// decimal prefix, 0 when there is none.
long DecimalPrefix(const std::string& s) {
  std::size_t i = 0;
  bool neg = false;
  if (i < s.size() && s[i] == '-') {
    neg = true;
    ++i;
  }
  long v = 0;
  for (; i < s.size() && s[i] >= '0' && s[i] <= '9' && v < 100000000; ++i)
    v = v * 10 + (s[i] - '0');
  return neg ? -v : v;
}

// `setexpr X ${X} - 1` reads hex (simple_strtoul base 16, optional 0x) and
// prints the result with %lx.
std::string HexDecrement(const std::string& s) {
  std::size_t i = 0;
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) i = 2;
  unsigned long v = 0;
  for (; i < s.size() && v < 0x10000000; ++i) {
    const char c = s[i];
    unsigned d = 0;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      break;
    }
    v = v * 16 + d;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lx", v - 1);
  return buf;
}

}  // namespace

BootStep RunBootScript(EnvVars env) {
  // test -n "${BOOT_ORDER}" || setenv BOOT_ORDER "A B"  (and the counters)
  if (env[kVarOrder].empty()) env[kVarOrder] = kDefaultOrder;
  if (env[kVarALeft].empty()) env[kVarALeft] = std::to_string(kDefaultAttempts);
  if (env[kVarBLeft].empty()) env[kVarBLeft] = std::to_string(kDefaultAttempts);

  BootStep step;
  std::istringstream words(env[kVarOrder]);
  std::string word;
  bool first = true;
  while (words >> word) {
    if (!step.slot) {
      for (const Slot s : {Slot::kA, Slot::kB}) {
        if (word != SlotName(s)) continue;
        std::string& left = env[std::string(LeftVar(s))];
        if (DecimalPrefix(left) > 0) {
          left = HexDecrement(left);
          step.slot = s;
          step.fallback = !first;
        }
      }
    }
    first = false;
  }
  if (!step.slot) {
    env[kVarALeft] = std::to_string(kDefaultAttempts);
    env[kVarBLeft] = std::to_string(kDefaultAttempts);
  }
  step.env = std::move(env);
  return step;
}

}  // namespace sag::platform
