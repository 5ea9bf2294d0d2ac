#include "agent/installer_engines.h"

#include <spdlog/spdlog.h>

#include <utility>

namespace sag::agent {

namespace {

JobPhase PhaseOf(firmware::JobState state) {
  using S = firmware::JobState;
  switch (state) {
    case S::kCommitted:
      return JobPhase::kCommitted;
    case S::kRolledBack:
      return JobPhase::kRolledBack;
    case S::kFailed:
      return JobPhase::kFailed;
    case S::kRebooting:
    case S::kHealthChecking:
    case S::kCommitting:
    case S::kRollingBack:
      return JobPhase::kRebooting;
    default:
      return JobPhase::kRunning;
  }
}

JobPhase PhaseOf(dpi::JobState state) {
  switch (state) {
    case dpi::JobState::kCommitted:
      return JobPhase::kCommitted;
    case dpi::JobState::kRolledBack:
      return JobPhase::kRolledBack;
    case dpi::JobState::kFailed:
      return JobPhase::kFailed;
    default:
      return JobPhase::kRunning;
  }
}

template <typename T, typename F>
Expected<std::optional<EngineJob>> MapOpt(Expected<std::optional<T>> r, F f) {
  if (!r) return std::move(r).error();
  if (!*r) return std::optional<EngineJob>();
  return std::optional<EngineJob>(f(**r));
}

}  // namespace

// ---------------------------------------------------------------- Device

DeviceEngine::DeviceEngine(firmware::InstallerOptions options, firmware::Platform platform,
                           StepHookFn on_step) {
  options.on_step = std::move(on_step);
  installer_ = std::make_unique<firmware::DeviceInstaller>(
      std::move(options), std::move(platform),
      [this](const firmware::JobRecord& r, const firmware::Progress& p) {
        if (progress_) progress_(JobOf(r), p.done, p.total);
      });
}

EngineJob DeviceEngine::JobOf(const firmware::JobRecord& r) {
  return {r.id,         PhaseOf(r.state), std::string(firmware::JobStateName(r.state)),
          r.error,      r.from_version,   r.version,
          r.target_slot};
}

Expected<std::optional<EngineJob>> DeviceEngine::Resume() {
  return MapOpt(installer_->Resume(), &DeviceEngine::JobOf);
}

Expected<std::optional<EngineJob>> DeviceEngine::Lookup(const std::string& id) {
  return MapOpt(installer_->Lookup(id), &DeviceEngine::JobOf);
}

Expected<EngineJob> DeviceEngine::Install(const JobSpec& spec, VerifiedImage image,
                                          JobCancel& cancel) {
  if (image.reader == nullptr || image.header == nullptr) {
    return Error(Errc::kInternal, "a Device job needs the image's reader");
  }
  const firmware::JobSpec fs{spec.id, spec.source, spec.allow_downgrade, spec.reboot};
  SAG_TRY(auto record, installer_->Start(fs, *image.reader, *image.header, &cancel));
  return JobOf(record);
}

Expected<std::string> DeviceEngine::CurrentVersion() { return installer_->CurrentVersion(); }

Expected<EngineJob> DeviceEngine::Abandon(const std::string& id, Error error) {
  SAG_TRY(auto record, installer_->Abandon(id, std::move(error)));
  return JobOf(record);
}

// ---------------------------------------------------------------- DPI

DpiEngine::DpiEngine(dpi::Options options, platform::SystemInfo* system, StepHookFn on_step) {
  // A DPI job's states are its progress: each is reported as it is entered.
  options.on_step = [this, hook = std::move(on_step)](const std::string& job,
                                                      std::string_view step) {
    if (hook) hook(job, step);
    if (progress_) {
      EngineJob j;
      j.id = job;
      j.phase = JobPhase::kRunning;
      j.state = std::string(step);
      progress_(j, 0, 0);
    }
  };
  installer_ = std::make_unique<dpi::DpiInstaller>(std::move(options), system);
}

EngineJob DpiEngine::JobOf(const dpi::JobResult& r) {
  return {r.job_id, PhaseOf(r.state),        std::string(dpi::JobStateName(r.state)),
          r.error,  r.previous.value_or(""), r.version,
          ""};
}

Expected<std::optional<EngineJob>> DpiEngine::Resume() {
  return MapOpt(installer_->Resume(), &DpiEngine::JobOf);
}

Expected<std::optional<EngineJob>> DpiEngine::Lookup(const std::string& id) {
  return MapOpt(installer_->Lookup(id), &DpiEngine::JobOf);
}

Expected<EngineJob> DpiEngine::Install(const JobSpec& spec, VerifiedImage image,
                                       JobCancel& cancel) {
  if (image.reader == nullptr || image.header == nullptr) {
    return Error(Errc::kInternal, "a DPI job needs the image's reader");
  }
  image::ImageReader& reader = *image.reader;
  dpi::CallbackPayloadSource payload(
      [&reader]() -> Expected<std::optional<std::span<const std::uint8_t>>> {
        SAG_TRY(auto chunk, reader.NextChunk());
        if (!chunk) return std::optional<std::span<const std::uint8_t>>();
        return std::optional<std::span<const std::uint8_t>>(chunk->data);
      });
  SAG_TRY(auto result, installer_->Install({spec.id, spec.version, spec.allow_downgrade},
                                           dpi::PackageInfo::FromManifest(image.header->manifest),
                                           payload, &cancel));
  if (result.ok()) {
    spdlog::info("job {}: DPI database {} active and confirmed by the engine", spec.id,
                 result.version);
  } else {
    spdlog::error("job {}: DPI {} {}: {}", spec.id, result.version, dpi::JobStateName(result.state),
                  result.error ? result.error->ToString() : std::string("no cause"));
  }
  return JobOf(result);
}

Expected<std::string> DpiEngine::CurrentVersion() { return installer_->CurrentVersion(); }

Expected<EngineJob> DpiEngine::Abandon(const std::string& id, Error error) {
  SAG_TRY(auto result, installer_->Abandon(id, std::move(error)));
  return JobOf(result);
}

}  // namespace sag::agent
