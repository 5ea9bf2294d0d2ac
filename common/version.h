// Version strings and their order.
//
// Device OS versions are dotted numerics of 2 to 4 parts ("1.0.1",
// "2.3.1.1"), compared part by part as numbers, missing parts counting as 0.
// DPI database versions look like "20201117_1_0-0.0.1": date, build, engine
// major, then the engine version after '-'. They are ordered by
// (date, build, engine major, engine version) numerically.
#pragma once

#include <compare>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace sag {

enum class VersionKind { kDevice, kDpi };

class Version {
 public:
  static Expected<Version> Parse(VersionKind kind, std::string_view text);

  [[nodiscard]] const std::string& text() const { return text_; }
  [[nodiscard]] VersionKind kind() const { return kind_; }

  std::strong_ordering operator<=>(const Version& other) const;
  bool operator==(const Version& other) const { return (*this <=> other) == 0; }

 private:
  VersionKind kind_ = VersionKind::kDevice;
  std::string text_;
  std::vector<unsigned long> parts_;  // normalized numeric key
};

}  // namespace sag
