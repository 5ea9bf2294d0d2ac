// Percent-encoding as Alibaba Cloud's RPC API and its SDKs use it.
//
// Encoding is RFC 3986 over UTF-8 bytes: only A-Z a-z 0-9 - _ . ~ stay
// literal, every other byte becomes %XX with upper-case hex (space is %20,
// never '+'; '*' is %2A; '~' stays). Both signature schemes sign this form.
//
// Decoding reads what arrives on the wire, which is looser than what is
// signed: "%xx" in either case, literal bytes the encoder would have escaped
// ("*()!" arrive literal from some clients) and '+' as a space, as
// application/x-www-form-urlencoded defines it (an SDK sends a real '+' as
// %2B). A '%' not followed by two hex digits is malformed and refused.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.h"

namespace sag::cloud::rpc {

std::string PercentEncode(std::string_view raw);

// kInvalidArgument on a bad escape, naming its offset.
Expected<std::string> PercentDecode(std::string_view encoded);

using ParamList = std::vector<std::pair<std::string, std::string>>;

// "a=1&b=&c" -> {a,1} {b,""} {c,""}, names and values decoded, in order,
// duplicates kept (the caller refuses them). Empty segments ("a=1&&b=2") are
// skipped. kInvalidArgument on a bad escape or an empty name.
Expected<ParamList> ParseQueryString(std::string_view query);

}  // namespace sag::cloud::rpc
