// The installer with the real fake engine binary as its hooks: commits,
// refusals, engine failures that must end with the previous database active
// and confirmed, job replay, and resume from every state.
#include "dpi/installer.h"

#include <gtest/gtest.h>

#include "common/journal.h"
#include "common/process.h"
#include "tests/unit/dpi/dpi_env.h"

namespace sag::dpi {
namespace {

namespace fs = std::filesystem;
using test::BufferSource;
using test::DpiEnv;
using test::DpiVersion;
using test::IsCompleteDb;
using test::MakeDb;

const std::string kV1 = DpiVersion(1);
const std::string kV2 = DpiVersion(2);
const std::string kV3 = DpiVersion(3);

class InstallerTest : public ::testing::Test {
 protected:
  void InstallV1() {
    auto r = env_.Install("job-1", kV1, MakeDb(kV1));
    ASSERT_TRUE(r) << r.error().ToString();
    ASSERT_EQ(r->state, JobState::kCommitted) << (r->error ? r->error->ToString() : "");
  }

  // The invariant after any failure: v1 active, complete, loaded and confirmed.
  void ExpectPreviousActive(const std::string& version = kV1) {
    auto installer = env_.MakeInstaller();
    auto cur = installer.CurrentVersion();
    ASSERT_TRUE(cur) << cur.error().ToString();
    EXPECT_EQ(*cur, version);
    EXPECT_TRUE(IsCompleteDb(env_.store() / "current", version));
    EXPECT_EQ(env_.EngineLoaded(), version);
    EXPECT_EQ(fs::path(env_.EngineLoadedFrom()).filename(), version);
    EXPECT_TRUE(fs::is_empty(env_.store() / "staging"));
    EXPECT_FALSE(fs::exists(fs::symlink_status(env_.store() / "current.tmp")));
  }

  DpiEnv env_;
};

TEST(JobStateTable, TerminalStatesAndTransitions) {
  EXPECT_TRUE(IsTerminal(JobState::kCommitted));
  EXPECT_TRUE(IsTerminal(JobState::kRolledBack));
  EXPECT_TRUE(IsTerminal(JobState::kFailed));
  EXPECT_FALSE(IsTerminal(JobState::kRollingBack));
  EXPECT_TRUE(TransitionAllowed(JobState::kValidating, JobState::kFailed));
  EXPECT_FALSE(TransitionAllowed(JobState::kReloading, JobState::kFailed));  // must roll back
  EXPECT_FALSE(TransitionAllowed(JobState::kStaging, JobState::kRollingBack));
  EXPECT_FALSE(TransitionAllowed(JobState::kCommitted, JobState::kRollingBack));
  for (auto s :
       {JobState::kChecking, JobState::kStaging, JobState::kValidating, JobState::kSwapping,
        JobState::kReloading, JobState::kConfirming, JobState::kCommitted, JobState::kRollingBack,
        JobState::kRolledBack, JobState::kFailed}) {
    EXPECT_EQ(ParseJobState(JobStateName(s)), s);
  }
}

TEST_F(InstallerTest, FirstInstallCommitsAndTheEngineLoadsIt) {
  InstallV1();
  ExpectPreviousActive(kV1);
  auto record = Journal(env_.options().journal).Load();
  ASSERT_TRUE(record && record->has_value());
  EXPECT_EQ((**record)["job"]["state"], "Committed");
}

TEST_F(InstallerTest, UpgradeZstdKeepsPreviousAndPrunesBeyondKeep) {
  InstallV1();
  auto r2 = env_.Install("job-2", kV2, MakeDb(kV2, /*zstd=*/true));
  ASSERT_TRUE(r2);
  ASSERT_TRUE(r2->ok()) << r2->error->ToString();
  EXPECT_EQ(r2->previous, kV1);
  EXPECT_EQ(r2->active, kV2);
  EXPECT_TRUE(IsCompleteDb(env_.store() / "versions" / kV1, kV1));  // kept for rollback
  auto r3 = env_.Install("job-3", kV3, MakeDb(kV3));
  ASSERT_TRUE(r3 && r3->ok());
  ExpectPreviousActive(kV3);
  EXPECT_TRUE(fs::exists(env_.store() / "versions" / kV2));
  EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV1));  // keep = 2
}

TEST_F(InstallerTest, AJobIdOfferedAgainIsAnsweredNotRun) {
  InstallV1();
  auto installer = env_.MakeInstaller();
  test::BufferSource src(MakeDb(kV2), 4096);
  auto again = installer.Install(
      {"job-1", kV2, false}, {image::ImageType::kDpi, kV2, 1, {std::string(test::kModel)}}, src);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->state, JobState::kCommitted);
  EXPECT_EQ(again->version, kV1);
  EXPECT_EQ(src.calls(), 0);
  // Still answered once it moved to the history.
  ASSERT_TRUE(env_.Install("job-2", kV2, MakeDb(kV2))->ok());
  auto old = installer.Install({"job-1", kV3, false},
                               {image::ImageType::kDpi, kV3, 1, {std::string(test::kModel)}}, src);
  ASSERT_TRUE(old);
  EXPECT_TRUE(old->replayed);
  EXPECT_EQ(old->version, kV1);
  EXPECT_EQ(src.calls(), 0);
  ExpectPreviousActive(kV2);
}

TEST_F(InstallerTest, RefusesOlderAndSameVersionsUnlessDowngradeAllowed) {
  InstallV1();
  ASSERT_TRUE(env_.Install("job-2", kV2, MakeDb(kV2))->ok());
  auto old = env_.Install("job-3", kV1, MakeDb(kV1));
  ASSERT_TRUE(old);
  EXPECT_EQ(old->state, JobState::kFailed);
  EXPECT_EQ(old->error->code(), Errc::kVersionTooOld);
  EXPECT_EQ(old->failed_in, JobState::kChecking);
  auto same = env_.Install("job-4", kV2, MakeDb(kV2), /*allow_downgrade=*/true);
  EXPECT_EQ(same->error->code(), Errc::kVersionTooOld);
  ExpectPreviousActive(kV2);
  auto down = env_.Install("job-5", kV1, MakeDb(kV1), /*allow_downgrade=*/true);
  ASSERT_TRUE(down && down->ok()) << down->error->ToString();
  ExpectPreviousActive(kV1);
}

// An active database whose name is not a DPI version (put there by hand or
// by a factory image) cannot be compared: refused unless allow_downgrade.
TEST_F(InstallerTest, UnparsableActiveVersionRefusesUnlessDowngradeAllowed) {
  InstallV1();
  const auto store = env_.store();
  fs::copy(store / "versions" / kV1, store / "versions" / "factory-12",
           fs::copy_options::recursive);
  fs::remove(store / "current");
  fs::create_directory_symlink("versions/factory-12", store / "current");
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kVersionUnparsable) << r->error->ToString();
  EXPECT_EQ(r->failed_in, JobState::kChecking);
  EXPECT_NE(r->error->message().find("factory-12"), std::string::npos) << r->error->message();
  EXPECT_NE(r->error->message().find("allow_downgrade"), std::string::npos) << r->error->message();
  EXPECT_EQ(*env_.MakeInstaller().CurrentVersion(), "factory-12");
  auto allowed = env_.Install("job-3", kV2, MakeDb(kV2), /*allow_downgrade=*/true);
  ASSERT_TRUE(allowed && allowed->ok()) << allowed->error->ToString();
}

TEST_F(InstallerTest, RefusesAWrongPackageType) {
  InstallV1();
  auto installer = env_.MakeInstaller();
  test::BufferSource src(MakeDb(kV2));
  auto r =
      installer.Install({"job-2", kV2, false},
                        {image::ImageType::kDevice, kV2, 100, {std::string(test::kModel)}}, src);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_EQ(r->error->code(), Errc::kWrongType);
  EXPECT_EQ(src.calls(), 0);
  ExpectPreviousActive();
}

// A database signed for other models is refused as the Device path refuses
// an image for another model, before a byte is read or staged.
TEST_F(InstallerTest, RefusesAPackageForAnotherModel) {
  InstallV1();
  auto installer = env_.MakeInstaller();
  test::BufferSource src(MakeDb(kV2));
  auto r = installer.Install({"job-2", kV2, false},
                             {image::ImageType::kDpi, kV2, 100, {"sag-100wm", "sag-3000"}}, src);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->state, JobState::kFailed);
  ASSERT_TRUE(r->error);
  EXPECT_EQ(r->error->code(), Errc::kIncompatibleModel) << r->error->ToString();
  EXPECT_EQ(r->failed_in, JobState::kChecking);
  EXPECT_NE(r->error->message().find("sag-100wm, sag-3000"), std::string::npos)
      << r->error->message();
  EXPECT_NE(r->error->message().find("sag-1000"), std::string::npos) << r->error->message();
  EXPECT_EQ(src.calls(), 0);
  auto none = installer.Install({"job-3", kV2, false}, {image::ImageType::kDpi, kV2, 100, {}}, src);
  ASSERT_TRUE(none);
  ASSERT_TRUE(none->error);
  EXPECT_EQ(none->error->code(), Errc::kIncompatibleModel);
  EXPECT_EQ(src.calls(), 0);
  ExpectPreviousActive();
}

TEST_F(InstallerTest, RefusesWhenTheStoreLacksSpace) {
  InstallV1();
  env_.system().SetFree(1000);
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  EXPECT_EQ(r->error->code(), Errc::kNoSpace);
  ExpectPreviousActive();
}

TEST_F(InstallerTest, RefusesAJobWhoseVersionDiffersFromThePackage) {
  auto installer = env_.MakeInstaller();
  test::BufferSource src(MakeDb(kV2));
  auto r = installer.Install({"job-x", kV3, false},
                             {image::ImageType::kDpi, kV2, 100, {std::string(test::kModel)}}, src);
  EXPECT_EQ(r->error->code(), Errc::kInvalidArgument);
}

TEST_F(InstallerTest, RefusesAVersionFileThatDisagreesWithTheManifest) {
  InstallV1();
  auto r = env_.Install("job-2", kV2, MakeDb(kV2, false, false, kV3));
  EXPECT_EQ(r->error->code(), Errc::kDpiValidateFailed);
  EXPECT_EQ(r->failed_in, JobState::kStaging);
  ExpectPreviousActive();
}

TEST_F(InstallerTest, HostileArchiveLeavesTheActiveDatabaseUntouched) {
  InstallV1();
  int n = 0;
  for (const auto& [archive, code] : std::vector<std::pair<std::string, Errc>>{
           {test::TarBuilder().File("version", kV2 + "\n").File("../../../x", "x").Finish(),
            Errc::kArchiveUnsafePath},
           {test::TarBuilder().File("version", kV2 + "\n").Hardlink("s", "/etc/shadow").Finish(),
            Errc::kArchiveUnsafeLink},
           {MakeDb(kV2).substr(0, 3000), Errc::kArchiveMalformed}}) {
    auto r = env_.Install("hostile-" + std::to_string(n++), kV2, archive);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->state, JobState::kFailed);
    EXPECT_EQ(r->error->code(), code) << r->error->ToString();
    EXPECT_EQ(r->failed_in, JobState::kStaging);
    ExpectPreviousActive();
    EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV2));
  }
}

TEST_F(InstallerTest, ValidateFailureKeepsThePrevious) {
  InstallV1();
  auto r = env_.Install("job-2", kV2, MakeDb(kV2, false, /*reject=*/true));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_EQ(r->error->code(), Errc::kDpiValidateFailed) << r->error->ToString();
  EXPECT_EQ(r->failed_in, JobState::kValidating);
  EXPECT_NE(r->error->message().find("rejected"), std::string::npos) << r->error->message();
  ExpectPreviousActive();
  EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV2));
}

TEST_F(InstallerTest, ReloadFailureRollsBackAndConfirmsThePrevious) {
  InstallV1();
  env_.Control("reject-on-reload", kV2 + "\n");
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kRolledBack);
  EXPECT_EQ(r->error->code(), Errc::kDpiReloadFailed) << r->error->ToString();
  EXPECT_EQ(r->failed_in, JobState::kReloading);
  EXPECT_EQ(r->active, kV1);
  ExpectPreviousActive();
  EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV2));
}

TEST_F(InstallerTest, ConfirmMismatchRollsBack) {
  InstallV1();
  env_.Control("confirm-override", kV2 + " 20250101_9_0-0.9\n");
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kRolledBack);
  EXPECT_EQ(r->error->code(), Errc::kDpiConfirmMismatch) << r->error->ToString();
  EXPECT_EQ(r->failed_in, JobState::kConfirming);
  ExpectPreviousActive();
}

TEST_F(InstallerTest, EngineCrashOnReloadRollsBack) {
  InstallV1();
  env_.Control("crash-on-reload", kV2 + "\n");
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kRolledBack);
  EXPECT_EQ(r->error->code(), Errc::kDpiReloadFailed);
  EXPECT_NE(r->error->message().find("signal 9"), std::string::npos) << r->error->message();
  ExpectPreviousActive();
}

TEST_F(InstallerTest, ReloadTimeoutRollsBack) {
  InstallV1();
  env_.options().hooks.reload.timeout = std::chrono::milliseconds(500);
  env_.Control("hang-on-reload", kV2 + "\n");
  const auto start = std::chrono::steady_clock::now();
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(15));
  EXPECT_EQ(r->state, JobState::kRolledBack);
  EXPECT_EQ(r->error->code(), Errc::kDpiReloadFailed);
  EXPECT_NE(r->error->message().find("did not finish"), std::string::npos) << r->error->message();
  ExpectPreviousActive();
}

TEST_F(InstallerTest, RollbackThatFailsTooIsReportedNotHidden) {
  InstallV1();
  env_.Control("crash-on-reload", "*\n");
  auto r = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->state, JobState::kFailed);
  EXPECT_EQ(r->error->code(), Errc::kDpiReloadFailed);
  EXPECT_NE(r->error->message().find("operator"), std::string::npos);
  EXPECT_EQ(*env_.MakeInstaller().CurrentVersion(), kV1);  // the link is back anyway
}

TEST_F(InstallerTest, SourceErrorFailsCleanly) {
  InstallV1();
  auto installer = env_.MakeInstaller();
  test::BufferSource src(MakeDb(kV2), 1024);
  src.FailAt(4096);
  auto r = installer.Install({"job-2", kV2, false},
                             {image::ImageType::kDpi, kV2, src.size(), {std::string(test::kModel)}},
                             src);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->error->code(), Errc::kChunkHashMismatch);
  ExpectPreviousActive();
}

TEST_F(InstallerTest, AnUnfinishedJobBlocksOthersUntilResumed) {
  InstallV1();
  ASSERT_TRUE(
      Journal(env_.options().journal)
          .Save({{"kind", "dpi"},
                 {"job",
                  {{"id", "job-2"}, {"version", kV2}, {"previous", kV1}, {"state", "Staging"}}},
                 {"history", nlohmann::json::array()}}));
  auto r = env_.Install("job-3", kV3, MakeDb(kV3));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kJobConflict);
  auto same = env_.Install("job-2", kV2, MakeDb(kV2));
  ASSERT_TRUE(same);
  EXPECT_EQ(same->state, JobState::kStaging);  // answered with its state, not run
}

TEST_F(InstallerTest, RefusesToRunWithoutReloadAndConfirmHooks) {
  env_.options().hooks.confirm.command.clear();
  auto r = env_.Install("job-1", kV1, MakeDb(kV1));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), Errc::kInvalidArgument);
}

// Resume from every non-terminal state, with the store set up as the crash
// would have left it.
struct ResumeCase {
  JobState crashed_in;
  bool staged;    // staging/v2 exists
  bool promoted;  // versions/v2 exists
  bool swapped;   // current -> v2
  bool reloaded;  // the engine loaded v2
  JobState expect;
  std::string expect_active;
};

class ResumeTest : public InstallerTest, public ::testing::WithParamInterface<ResumeCase> {};

TEST_P(ResumeTest, EndsWithOneCompleteDatabaseActiveAndLoaded) {
  const auto& c = GetParam();
  InstallV1();
  Store store(env_.store());
  if (c.staged || c.promoted) {
    auto dir = store.PrepareStaging(kV2);
    ASSERT_TRUE(dir);
    test::BufferSource src(MakeDb(kV2));
    ASSERT_TRUE(ExtractPayload(src, *dir, {}));
  }
  if (c.promoted) {
    ASSERT_TRUE(store.Promote(kV2));
  }
  if (c.swapped) {
    ASSERT_TRUE(store.Activate(kV2));
    // A crash between the symlink's creation and its rename leaves this:
    fs::create_symlink("versions/" + kV1, env_.store() / "current.tmp");
  }
  if (c.reloaded) {
    ASSERT_TRUE(CheckCommand(env_.options().hooks.reload.command));
    ASSERT_EQ(env_.EngineLoaded(), kV2);
  }
  nlohmann::json history = nlohmann::json::array();
  const bool rolling = c.crashed_in == JobState::kRollingBack;
  ASSERT_TRUE(
      Journal(env_.options().journal)
          .Save({{"kind", "dpi"},
                 {"job",
                  {{"id", "job-2"},
                   {"version", kV2},
                   {"previous", kV1},
                   {"state", std::string(JobStateName(c.crashed_in))},
                   // What a rollback started by a reload failure records:
                   {"error", rolling ? nlohmann::json{{"code", 611}, {"message", "reload"}}
                                     : nlohmann::json(nullptr)},
                   {"failed_in", rolling ? nlohmann::json("Reloading") : nlohmann::json(nullptr)}}},
                 {"history", history}}));
  auto installer = env_.MakeInstaller();
  auto r = installer.Resume();
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->state, c.expect) << ((*r)->error ? (*r)->error->ToString() : "");
  if (c.expect != JobState::kCommitted) {
    ASSERT_TRUE((*r)->error);
    EXPECT_EQ((*r)->error->code(), rolling ? Errc::kDpiReloadFailed : Errc::kDpiInterrupted);
    EXPECT_EQ((*r)->failed_in, rolling ? JobState::kReloading : c.crashed_in);
    EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV2));
  }
  ExpectPreviousActive(c.expect_active);
  // Resuming again changes nothing and answers from the journal.
  auto again = installer.Resume();
  ASSERT_TRUE(again && again->has_value());
  EXPECT_TRUE((*again)->replayed);
  EXPECT_EQ((*again)->state, c.expect);
}

INSTANTIATE_TEST_SUITE_P(
    States, ResumeTest,
    ::testing::Values(
        ResumeCase{JobState::kChecking, false, false, false, false, JobState::kFailed, kV1},
        ResumeCase{JobState::kStaging, true, false, false, false, JobState::kFailed, kV1},
        ResumeCase{JobState::kValidating, true, false, false, false, JobState::kFailed, kV1},
        ResumeCase{JobState::kSwapping, true, false, false, false, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kSwapping, false, true, false, false, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kSwapping, false, true, true, false, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kReloading, false, true, true, false, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kReloading, false, true, true, true, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kConfirming, false, true, true, true, JobState::kRolledBack, kV1},
        ResumeCase{JobState::kRollingBack, false, true, true, true, JobState::kRolledBack, kV1}),
    [](const auto& param_info) {
      return std::string(JobStateName(param_info.param.crashed_in)) + "_" +
             std::to_string(param_info.index);
    });

// The first state was called Verifying (a word that means the Device job's
// read-back); a journal an older agent wrote in it still resumes.
TEST_F(InstallerTest, AJournalWithTheOldNameOfCheckingResumes) {
  EXPECT_EQ(JobStateName(JobState::kChecking), "Checking");
  EXPECT_EQ(ParseJobState("Verifying"), JobState::kChecking);
  ASSERT_TRUE(Journal(env_.options().journal)
                  .Save({{"kind", "dpi"},
                         {"job",
                          {{"id", "old-1"},
                           {"version", kV2},
                           {"previous", nullptr},
                           {"state", "Verifying"},
                           {"error", nullptr},
                           {"failed_in", nullptr}}},
                         {"history", nlohmann::json::array()}}));
  auto r = env_.MakeInstaller().Resume();
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_TRUE(r->has_value());
  EXPECT_EQ((*r)->state, JobState::kFailed);
  ASSERT_TRUE((*r)->error);
  EXPECT_EQ((*r)->error->code(), Errc::kDpiInterrupted);
  EXPECT_EQ((*r)->failed_in, JobState::kChecking);
}

// A cancel (common/job_cancel.h) before the swap ends the job Failed with
// Cancelled, the staging removed and v1 active; at and after the swap it is
// refused and the job commits.
class CancelTest : public InstallerTest {
 protected:
  // Installs v2 with `cancel`, which the test requests at step `at`
  // ("chunk:N" = after N payload chunks of staging; else a state name).
  Expected<JobResult> InstallV2(JobCancel& cancel, const std::string& at) {
    env_.options().on_step = [&](const std::string&, std::string_view step) {
      if (step == at) answer_ = cancel.Request();
    };
    const std::string db = MakeDb(kV2);
    BufferSource src(db, 4096);
    int chunks = 0;
    src.OnChunk([&] {
      if (at == "chunk:" + std::to_string(++chunks)) answer_ = cancel.Request();
    });
    auto installer = env_.MakeInstaller();
    auto r = installer.Install(
        {"job-2", kV2, false},
        {image::ImageType::kDpi, kV2, db.size(), {std::string(test::kModel)}}, src, &cancel);
    env_.options().on_step = nullptr;
    payload_calls_ = src.calls();
    payload_chunks_ = static_cast<int>((db.size() + 4095) / 4096);
    return r;
  }

  void ExpectCancelled(const Expected<JobResult>& r) {
    ASSERT_TRUE(r) << r.error().ToString();
    EXPECT_EQ(answer_, JobCancel::Answer::kAccepted);
    EXPECT_EQ(r->state, JobState::kFailed);
    ASSERT_TRUE(r->error);
    EXPECT_EQ(r->error->code(), Errc::kCancelled) << r->error->ToString();
    ExpectPreviousActive();
    EXPECT_FALSE(fs::exists(env_.store() / "versions" / kV2));
    // Answered from the journal afterwards, and a late cancel is refused.
    auto again = env_.MakeInstaller().Lookup("job-2");
    ASSERT_TRUE(again && *again);
    EXPECT_EQ((*again)->error->code(), Errc::kCancelled);
  }

  std::optional<JobCancel::Answer> answer_;
  int payload_calls_ = 0;   // Next() calls that reached the payload
  int payload_chunks_ = 0;  // chunks the payload has
};

TEST_F(CancelTest, MidStagingEndsCancelledWithTheOldDatabaseActive) {
  InstallV1();
  JobCancel cancel;
  auto r = InstallV2(cancel, "chunk:3");
  ExpectCancelled(r);
  EXPECT_EQ(r->failed_in, JobState::kStaging);
  EXPECT_LT(payload_calls_, payload_chunks_) << "staging stopped between chunks";
  EXPECT_EQ(cancel.Request(), JobCancel::Answer::kAccepted) << "asking twice answers the same";
}

TEST_F(CancelTest, AtValidatingEndsCancelled) {
  InstallV1();
  JobCancel cancel;
  auto r = InstallV2(cancel, "Validating");
  ExpectCancelled(r);
}

TEST_F(CancelTest, AtTheSwapIsRefusedAndTheJobCommits) {
  InstallV1();
  JobCancel cancel;
  auto r = InstallV2(cancel, "Swapping");
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(answer_, JobCancel::Answer::kPastNoReturn);
  EXPECT_EQ(r->state, JobState::kCommitted) << (r->error ? r->error->ToString() : "");
  EXPECT_EQ(env_.EngineLoaded(), kV2);
}

TEST_F(CancelTest, AfterTheJobEndedIsRefused) {
  InstallV1();
  JobCancel cancel;
  auto r = InstallV2(cancel, "none");
  ASSERT_TRUE(r && r->state == JobState::kCommitted);
  EXPECT_EQ(cancel.Request(), JobCancel::Answer::kPastNoReturn);
}

TEST_F(InstallerTest, ResumeWithNoJobIsNothing) {
  auto r = env_.MakeInstaller().Resume();
  ASSERT_TRUE(r);
  EXPECT_FALSE(r->has_value());
}

}  // namespace
}  // namespace sag::dpi
