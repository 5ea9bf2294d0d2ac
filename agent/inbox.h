// The local job source: `sag-agent install` (and an operator) drop job
// requests into STATE_DIR/inbox as NAME.json; the daemon takes them in name
// order. The directory is writable by the agent's user only, but what is in
// it is still read as untrusted input, because a stuck or crashing daemon is
// worse than a refused request:
//
//   - only regular files: lstat() and then open(O_NOFOLLOW | O_NONBLOCK), and
//     fstat() of the open file must be the same regular file (a FIFO would
//     block the reader forever, a symlink could point anywhere);
//   - owned by root or by the agent's own user;
//   - at most max_bytes (64 KiB);
//   - decoded by a strict schema, the job model's fields (agent/job.h
//     JobSpec): {"id": string, "source": string, "type": "Device"|"Dpi",
//     "version": string, "size": unsigned, "sha256": string,
//     "allow_downgrade": bool, "reboot": bool, "deadline": string}, all but
//     id and source optional, no other key, every type and format checked.
//
// A request that fails any of these is moved to inbox/rejected/NAME (with
// NAME.error holding the reason) and answered in replies/NAME.json, so the
// daemon goes on serving and the request is kept for the operator. Replies
// (replies/NAME.json) are how `sag-agent install` learns at once that the
// daemon refused or finished its job; the installer that wrote the request
// removes its reply. Names starting with '.' (WriteFileAtomic's temporary
// files) and names not ending in ".json" are not requests and are left alone.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/job.h"
#include "common/error.h"

namespace sag::agent {

struct InboxRequest {
  std::string name;  // the file name without ".json": the reply's name
  JobSpec spec;
};

struct InboxRejection {
  std::string name;  // the file name as found in the inbox
  Error error;
};

struct InboxOptions {
  std::filesystem::path dir;           // STATE_DIR/inbox
  std::size_t max_bytes = 64U << 10U;  // a request is a few hundred bytes
  uid_t agent_uid = 0;                 // besides root, the owner a request may have
};

// Decodes one request's text (kBadRequest with the field and the problem).
// `what` names it in messages ("inbox request x.json").
Expected<InboxRequest> DecodeInboxRequest(std::string_view text, std::string_view what);

class Inbox {
 public:
  explicit Inbox(InboxOptions options);

  // Creates inbox/, inbox/rejected/ and inbox/replies/.
  Status Prepare() const;

  // The first valid request in name order, or nullopt when there is none.
  // Invalid entries met on the way are moved aside and answered (see the
  // file comment) and appended to `rejected` when it is not null. The
  // request's file stays until Remove(): a power cut before the job is
  // recorded must not lose it.
  Expected<std::optional<InboxRequest>> Next(std::vector<InboxRejection>* rejected = nullptr);

  // Removes a taken request's file.
  Status Remove(const InboxRequest& request) const;

  // Writes replies/NAME.json atomically.
  Status Reply(std::string_view name, const nlohmann::json& reply) const;

  [[nodiscard]] std::filesystem::path RequestPath(std::string_view name) const;
  [[nodiscard]] std::filesystem::path ReplyPath(std::string_view name) const;
  [[nodiscard]] std::filesystem::path RejectedDir() const { return options_.dir / "rejected"; }

 private:
  // Reads and decodes one entry; kBadRequest (or kIo) when it is not a request.
  Expected<InboxRequest> Read(const std::string& file_name) const;
  void Reject(const std::string& file_name, const Error& error) const;

  InboxOptions options_;
};

}  // namespace sag::agent
