#include "agent/status.h"

#include <spdlog/spdlog.h>

#include <sstream>
#include <utility>

#include "common/atomic_file.h"
#include "firmware/job.h"

namespace sag::agent {

Status StatusFile::Update(const nlohmann::json& fields) {
  // Top-level keys are replaced whole: a DPI job must not inherit fields of
  // the Device job reported before it.
  for (const auto& [key, value] : fields.items()) doc_[key] = value;
  doc_["updated_at"] = firmware::NowUtc();
  // A runtime file, rebuilt at start: replaced untorn, not made durable.
  return ReplaceFile(path_, doc_.dump(2) + "\n", 0644);
}

Expected<nlohmann::json> StatusFile::Read() const {
  SAG_TRY(const auto text, ReadFile(path_, 1U << 20U));
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    return Error(Errc::kIo, path_.string() + " is not JSON");
  }
  return doc;
}

StatusWriter::StatusWriter(std::filesystem::path path)
    : file_(std::move(path)), thread_([this] { Run(); }) {}

StatusWriter::~StatusWriter() {
  {
    const std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void StatusWriter::Post(const nlohmann::json& fields) {
  {
    const std::lock_guard lock(mu_);
    for (const auto& [key, value] : fields.items()) posted_[key] = value;
  }
  cv_.notify_all();
}

nlohmann::json StatusWriter::TakePosted() {
  const std::lock_guard lock(mu_);
  return std::exchange(posted_, nlohmann::json::object());
}

Status StatusWriter::Update(const nlohmann::json& fields) {
  const std::lock_guard lock(file_mu_);
  nlohmann::json all = TakePosted();
  for (const auto& [key, value] : fields.items()) all[key] = value;
  return file_.Update(all);
}

void StatusWriter::Run() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !posted_.empty(); });
      if (posted_.empty()) return;  // stopped, nothing left to write
    }
    // Taken under file_mu_: an Update() between taking and writing would
    // otherwise be overwritten by older fields.
    const std::lock_guard lock(file_mu_);
    const nlohmann::json posted = TakePosted();
    if (posted.empty()) continue;  // an Update() wrote it
    if (auto st = file_.Update(posted); !st) spdlog::warn("status: {}", st.error().ToString());
  }
}

std::string FormatStatus(const nlohmann::json& s) {
  std::ostringstream out;
  auto str = [&](const char* key) {
    return s.contains(key) && s[key].is_string() ? s[key].get<std::string>() : std::string("-");
  };
  out << "appliance   " << str("smartag_id") << "  serial " << str("serial_number") << "  model "
      << str("model") << "\n";
  out << "agent       " << str("agent_version") << "  " << str("state") << "\n";
  out << "device OS   " << str("device_version") << "  (booted slot " << str("booted_slot")
      << ")\n";
  out << "DPI db      " << str("dpi_version") << "\n";
  if (s.contains("boot") && s["boot"].is_object()) {
    const auto& b = s["boot"];
    out << "boot env    BOOT_ORDER=\"" << b.value("order", "")
        << "\" A_LEFT=" << b.value("a_left", 0) << " B_LEFT=" << b.value("b_left", 0) << "\n";
  }
  if (s.contains("job") && s["job"].is_object()) {
    const auto& j = s["job"];
    out << "last job    " << j.value("id", "-") << "  " << j.value("type", "") << " "
        << j.value("version", "") << "  " << j.value("state", "");
    if (j.contains("percent")) out << "  " << j["percent"].get<int>() << "%";
    out << "\n";
    if (j.contains("error") && j["error"].is_object()) {
      out << "            E" << j["error"].value("code", 0) << " " << j["error"].value("name", "")
          << ": " << j["error"].value("message", "") << "\n";
    }
  }
  out << "updated     " << str("updated_at") << "\n";
  return out.str();
}

}  // namespace sag::agent
