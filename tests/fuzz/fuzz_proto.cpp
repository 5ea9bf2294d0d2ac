// libFuzzer: the device channel's message decoder (proto::Decode), which both
// ends run on bytes from the network. A message that decodes must encode to
// text that decodes to the same message.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "common/proto/messages.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto m = sag::proto::Decode(text);
  if (m) {
    const auto again = sag::proto::Decode(sag::proto::Encode(*m));
    if (!again || !(*again == *m)) std::abort();
  } else {
    (void)sag::proto::ErrorCodeFor(m.error());
  }
  return 0;
}
