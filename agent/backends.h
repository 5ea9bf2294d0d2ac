// The composition root: the only place that builds the real backends (boot
// control, slots, rebooter, system info, the installers behind their engine
// interfaces, the registry, the outbox, the loop guard) from the
// configuration. The daemon and the commands use them through the
// interfaces; tests build fakes instead (tests/unit/agent/fake_engine.h).
#pragma once

#include <memory>

#include "agent/config.h"
#include "agent/hello_gate.h"
#include "agent/installer_engines.h"
#include "agent/outbox.h"
#include "agent/registry.h"
#include "agent/step_guard.h"
#include "common/error.h"
#include "common/image/image.h"
#include "common/net/downloader.h"
#include "platform/boot_control.h"
#include "platform/rebooter.h"
#include "platform/slot_device.h"
#include "platform/system_info.h"

namespace sag::agent {

struct Backends {
  std::unique_ptr<platform::BootControl> boot;
  std::unique_ptr<platform::SlotDevice> slot_a;
  std::unique_ptr<platform::SlotDevice> slot_b;
  std::unique_ptr<platform::Rebooter> rebooter;
  std::unique_ptr<platform::SystemInfo> system;
  std::unique_ptr<StepGuard> guard;
  std::unique_ptr<DeviceEngine> device;
  std::unique_ptr<DpiEngine> dpi;
  std::unique_ptr<JobRegistry> registry;
  std::unique_ptr<Outbox> outbox;
  image::Trust trust;
  net::DownloadOptions download;
  // With health.require_cloud: what the trial boot's cloud check waits on;
  // the daemon's channel signals it (ChannelOptions::hello_gate). Null
  // otherwise.
  std::shared_ptr<HelloGate> hello_gate;
};

// Builds everything from `config` and creates the state and runtime
// directories. A damaged outbox is moved aside (logged) and started afresh; a
// damaged registry is logged and refuses jobs until it is moved aside.
Expected<std::unique_ptr<Backends>> BuildBackends(const Config& config);

}  // namespace sag::agent
