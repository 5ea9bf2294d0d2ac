// Where the RPC API's signature nonces outlive the process: without one, a
// restart of sag-cloud would forget them and accept, within the time window,
// a replay of a request captured before the restart.
#pragma once

#include <string>

#include "cloud/rpc/api_backend.h"
#include "common/error.h"

namespace sag::cloud::rpc {

class NonceStore {
 public:
  virtual ~NonceStore() = default;
  // Records `key` (the access key id and the nonce) until `expires`: true
  // when it was new, false when it is already recorded and not expired.
  // Survives a crash of the process once returned; an error means that
  // nothing was recorded and the request must be refused.
  virtual Expected<bool> Remember(const std::string& key, Clock::time_point now,
                                  Clock::time_point expires) = 0;
};

}  // namespace sag::cloud::rpc
