// The engines the daemon runs jobs with (agent/engines.h), over the real
// installers: DeviceEngine over firmware::DeviceInstaller, DpiEngine over
// dpi::DpiInstaller. Each owns its installer and forwards its progress and
// step entries to what the dispatcher set.
#pragma once

#include <memory>

#include "agent/engines.h"
#include "dpi/installer.h"
#include "firmware/installer.h"

namespace sag::agent {

// Where engines report step entries (the loop guard, agent/step_guard.h).
using StepHookFn = std::function<void(const std::string& job, std::string_view step)>;

class DeviceEngine final : public InstallEngine {
 public:
  DeviceEngine(firmware::InstallerOptions options, firmware::Platform platform,
               StepHookFn on_step = {});

  [[nodiscard]] JobType type() const override { return JobType::kDevice; }
  void SetProgress(EngineProgressFn progress) override { progress_ = std::move(progress); }
  Expected<std::optional<EngineJob>> Resume() override;
  Expected<std::optional<EngineJob>> Lookup(const std::string& id) override;
  Expected<EngineJob> Install(const JobSpec& spec, VerifiedImage image, JobCancel& cancel) override;
  Expected<std::string> CurrentVersion() override;
  void Cancel() override { installer_->Cancel(); }
  Expected<EngineJob> Abandon(const std::string& id, Error error) override;

  // The installer itself, for what only a Device has (mark-good, rollback,
  // the last job for status.json).
  firmware::DeviceInstaller& installer() { return *installer_; }

  static EngineJob JobOf(const firmware::JobRecord& record);

 private:
  EngineProgressFn progress_;
  std::unique_ptr<firmware::DeviceInstaller> installer_;
};

class DpiEngine final : public InstallEngine {
 public:
  DpiEngine(dpi::Options options, platform::SystemInfo* system, StepHookFn on_step = {});

  [[nodiscard]] JobType type() const override { return JobType::kDpi; }
  void SetProgress(EngineProgressFn progress) override { progress_ = std::move(progress); }
  Expected<std::optional<EngineJob>> Resume() override;
  Expected<std::optional<EngineJob>> Lookup(const std::string& id) override;
  Expected<EngineJob> Install(const JobSpec& spec, VerifiedImage image, JobCancel& cancel) override;
  Expected<std::string> CurrentVersion() override;
  // A DPI job has no long step of its own to stop: its download is the
  // dispatcher's source, which the dispatcher's stop flag ends.
  void Cancel() override {}
  Expected<EngineJob> Abandon(const std::string& id, Error error) override;

  static EngineJob JobOf(const dpi::JobResult& result);

 private:
  EngineProgressFn progress_;
  std::unique_ptr<dpi::DpiInstaller> installer_;
};

}  // namespace sag::agent
