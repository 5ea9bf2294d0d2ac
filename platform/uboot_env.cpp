// U-Boot environment through libubootenv (the library behind fw_printenv).
// libuboot.h uses size_t without including a header for it.
#include <cstddef>
// clang-format off
#include <libuboot.h>
// clang-format on
#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>

#include "common/atomic_file.h"
#include "platform/boot_env.h"

namespace sag::platform {

namespace {

struct EnvDevice {
  std::string path;
  std::uint64_t offset = 0;
  std::uint64_t size = 0;
};

// libubootenv reports only a negative errno; reading fw_env.config ourselves
// lets the messages name the device that is missing or too small.
Expected<std::vector<EnvDevice>> ReadDevices(const std::filesystem::path& config) {
  auto text = ReadFile(config, 64U << 10U);
  if (!text) {
    return Error(text.error().code() == Errc::kNotFound ? Errc::kNotFound : Errc::kBootEnvCorrupt,
                 "cannot read the U-Boot environment configuration: " + text.error().message());
  }
  std::vector<EnvDevice> devices;
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string dev;
    std::string offset;
    std::string size;
    if (!(fields >> dev >> offset >> size)) continue;  // libubootenv skips such lines too
    EnvDevice d;
    d.path = dev;
    char* end = nullptr;
    d.offset = std::strtoull(offset.c_str(), &end, 0);
    d.size = std::strtoull(size.c_str(), &end, 16);
    devices.push_back(d);
  }
  if (devices.empty() || devices.size() > 2) {
    return Error(Errc::kBootEnvCorrupt,
                 config.string() +
                     " must name one or two environment copies as 'DEVICE OFFSET "
                     "SIZE' lines, found " +
                     std::to_string(devices.size()));
  }
  for (const auto& d : devices) {
    struct stat st {};
    if (::stat(d.path.c_str(), &st) != 0) {
      return MakeErrno(Errc::kBootEnvCorrupt,
                       "U-Boot environment device " + d.path + " (from " + config.string() + ")");
    }
    if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) < d.offset + d.size) {
      return Error(Errc::kBootEnvCorrupt,
                   "U-Boot environment file " + d.path + " is " + std::to_string(st.st_size) +
                       " bytes, too short for a copy of " + std::to_string(d.size) +
                       " bytes at offset " + std::to_string(d.offset) + " (" + config.string() +
                       ")");
    }
  }
  return devices;
}

std::string DescribeCopies(const std::vector<EnvDevice>& devices) {
  std::string out;
  for (const auto& d : devices) {
    if (!out.empty()) out += " and ";
    char buf[64];
    std::snprintf(buf, sizeof buf, " (offset 0x%llx)", static_cast<unsigned long long>(d.offset));
    out += d.path + buf;
  }
  return out;
}

// One libubootenv session: context, configuration, the environment loaded
// and fw_printenv's lock held until destruction.
class Session {
 public:
  Session() = default;
  ~Session() {
    if (opened_) libuboot_close(ctx_);
    if (ctx_ != nullptr) libuboot_exit(ctx_);
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // `allow_invalid`: go on with an empty variable list when no copy is
  // valid (for Format).
  Status Open(const std::filesystem::path& config, const std::string& name, bool allow_invalid) {
    SAG_TRY(auto devices, ReadDevices(config));
    if (const int r = libuboot_initialize(&ctx_, nullptr); r < 0) {
      return MakeErrno(Errc::kBootEnvCorrupt, "libuboot_initialize", -r);
    }
    if (const int r = libuboot_read_config(ctx_, config.c_str()); r < 0) {
      return MakeErrno(Errc::kBootEnvCorrupt, "libubootenv rejects " + config.string(), -r);
    }
    const int r = libuboot_open(ctx_);
    opened_ = true;  // the lock is taken even when loading fails
    if (r < 0 && !allow_invalid) {
      return Error(Errc::kBootEnvCorrupt,
                   name + ": no valid copy in " + DescribeCopies(devices) +
                       (devices.size() == 2 ? " (both CRCs wrong or unreadable)"
                                            : " (CRC wrong or unreadable)") +
                       "; the agent will not guess boot variables: restore the environment "
                       "(fw_setenv -c " +
                       config.string() + ", or reflash it)");
    }
    return Ok();
  }

  [[nodiscard]] EnvVars Vars() const {
    EnvVars vars;
    for (void* e = libuboot_iterator(ctx_, nullptr); e != nullptr; e = libuboot_iterator(ctx_, e)) {
      const char* n = libuboot_getname(e);
      const char* v = libuboot_getvalue(e);
      if (n != nullptr) vars[n] = v != nullptr ? v : "";
    }
    return vars;
  }

  Status Set(const std::string& name, const std::string& where, const std::string& var,
             const char* value) {
    if (const int r = libuboot_set_env(ctx_, var.c_str(), value); r < 0) {
      return MakeErrno(Errc::kBootEnvWrite, name + ": setting " + var + where, -r);
    }
    return Ok();
  }

  Status Store(const std::string& name) {
    if (const int r = libuboot_env_store(ctx_); r != 0) {
      return MakeErrno(Errc::kBootEnvWrite, name + ": storing the environment", r < 0 ? -r : EIO);
    }
    return Ok();
  }

 private:
  uboot_ctx* ctx_ = nullptr;
  bool opened_ = false;
};

Status CheckName(const std::string& var, const std::string& name) {
  if (var.empty() || var.find('=') != std::string::npos) {
    return Error(Errc::kBootEnvWrite, name + ": invalid variable name '" + var + "'");
  }
  return Ok();
}

}  // namespace

UBootEnv::UBootEnv(std::filesystem::path config)
    : config_(std::move(config)), name_("U-Boot environment (" + config_.string() + ")") {}

Expected<EnvVars> UBootEnv::Load() {
  Session s;
  SAG_TRY_STATUS(s.Open(config_, name_, false));
  return s.Vars();
}

Status UBootEnv::Update(const ChangeFn& change) {
  Session s;
  SAG_TRY_STATUS(s.Open(config_, name_, false));
  SAG_TRY(const EnvVars set, change(s.Vars()));
  if (set.empty()) return Ok();
  for (const auto& [var, value] : set) {
    SAG_TRY_STATUS(CheckName(var, name_));
    SAG_TRY_STATUS(s.Set(name_, "", var, value.c_str()));
  }
  return s.Store(name_);
}

Status UBootEnv::Format(const EnvVars& vars) {
  Session s;
  SAG_TRY_STATUS(s.Open(config_, name_, true));
  for (const auto& [var, value] : s.Vars()) {
    if (vars.count(var) == 0) SAG_TRY_STATUS(s.Set(name_, " (dropping)", var, nullptr));
  }
  for (const auto& [var, value] : vars) {
    SAG_TRY_STATUS(CheckName(var, name_));
    SAG_TRY_STATUS(s.Set(name_, "", var, value.c_str()));
  }
  // libubootenv writes the older copy on each store: twice fills both.
  SAG_TRY_STATUS(s.Store(name_));
  return s.Store(name_);
}

}  // namespace sag::platform
