#include "dpi/store.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "common/atomic_file.h"
#include "tests/support/powerloss_mount.h"
#include "tests/support/temp_dir.h"

namespace sag::dpi {
namespace {

namespace fs = std::filesystem;

const std::string kStoreV1 = "20260101_1_0-1.0";
const std::string kStoreV2 = "20260102_1_0-1.0";
const std::string kStoreV3 = "20260103_1_0-1.0";

void Stage(const Store& store, const std::string& v) {
  auto dir = store.PrepareStaging(v);
  ASSERT_TRUE(dir) << dir.error().ToString();
  ASSERT_TRUE(WriteFileAtomic(*dir / "version", v + "\n"));
  ASSERT_TRUE(store.Promote(v));
}

TEST(DpiStore, EmptyStoreHasNoCurrent) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  auto cur = store.Current();
  ASSERT_TRUE(cur);
  EXPECT_FALSE(cur->has_value());
}

TEST(DpiStore, ActivateSwapsARelativeSymlink) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  Stage(store, kStoreV1);
  ASSERT_TRUE(store.Activate(kStoreV1));
  EXPECT_EQ(fs::read_symlink(store.CurrentLink()), fs::path("versions") / kStoreV1);
  Stage(store, kStoreV2);
  ASSERT_TRUE(store.Activate(kStoreV2));
  EXPECT_EQ(**store.Current(), kStoreV2);
  EXPECT_EQ(*ReadFile(store.CurrentLink() / "version"), kStoreV2 + "\n");
  EXPECT_FALSE(fs::exists(store.root() / "current.tmp"));
  EXPECT_EQ(store.Remove(kStoreV2).error().code(), Errc::kDpiStore);  // active: refused
  ASSERT_TRUE(store.Activate(std::nullopt));
  EXPECT_FALSE(store.Current()->has_value());
}

TEST(DpiStore, ActivateRefusesAMissingVersion) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  EXPECT_EQ(store.Activate(kStoreV1).error().code(), Errc::kDpiStore);
  EXPECT_FALSE(fs::exists(fs::symlink_status(store.CurrentLink())));
}

TEST(DpiStore, CurrentRejectsAHandMadeLink) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  fs::create_symlink("/etc", store.CurrentLink());
  EXPECT_EQ(store.Current().error().code(), Errc::kDpiStore);
}

TEST(DpiStore, InitRemovesAStaleTmpLink) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  fs::create_symlink("versions/x", store.root() / "current.tmp");
  ASSERT_TRUE(store.Init());
  EXPECT_FALSE(fs::exists(fs::symlink_status(store.root() / "current.tmp")));
}

TEST(DpiStore, PromoteIsIdempotentAndReplacesStaleCopies) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  Stage(store, kStoreV1);
  ASSERT_TRUE(store.Promote(kStoreV1));  // already promoted: nothing to do
  auto staged = store.PrepareStaging(kStoreV1);
  ASSERT_TRUE(staged);
  ASSERT_TRUE(WriteFileAtomic(*staged / "version", "fresh\n"));
  ASSERT_TRUE(store.Promote(kStoreV1));
  EXPECT_EQ(*ReadFile(store.VersionDir(kStoreV1) / "version"), "fresh\n");
  ASSERT_TRUE(store.Activate(kStoreV1));
  ASSERT_TRUE(store.PrepareStaging(kStoreV1));
  EXPECT_EQ(store.Promote(kStoreV1).error().code(),
            Errc::kDpiStore);  // never replace the active one
}

TEST(DpiStore, PruneKeepsCurrentPreviousAndNewest) {
  sag::test::TempDir dir;
  Store store(dir / "dpi");
  ASSERT_TRUE(store.Init());
  for (const auto& v : {kStoreV1, kStoreV2, kStoreV3}) Stage(store, v);
  fs::create_directories(store.root() / "versions/garbage");
  ASSERT_TRUE(store.Activate(kStoreV2));
  ASSERT_TRUE(store.Prune(2, kStoreV1));
  auto list = *store.List();
  std::sort(list.begin(), list.end());
  EXPECT_EQ(list, (std::vector<std::string>{kStoreV1, kStoreV2}));
  ASSERT_TRUE(store.Prune(1, kStoreV1));
  EXPECT_EQ(*store.List(), std::vector<std::string>{kStoreV2});
}

std::string CurrentOf(const Store& store) {
  auto c = store.Current();
  if (!c) return c.error().ToString();
  return c->value_or("(none)");
}

// On sag-powerloss (docs/power-loss.md), where a cut loses every directory
// entry whose directory was not fsynced: each step of the store is durable
// when it returns, so a cut right after it keeps it (red without the fsync
// of the store's root after the swap of `current`, for one).
TEST(DpiStore, EveryStepIsDurableWhenItReturns) {
  sag::test::TempDir dir;
  fs::create_directories(dir / "mnt");
  const sag::test::PowerLossMount mount(SAG_POWERLOSS_BIN, dir / "mnt", dir / "mnt");
  if (!mount.Available()) GTEST_SKIP() << "no FUSE here (needs /dev/fuse and root)";
  const auto cut = [&mount] { return !mount.Control("cut").empty(); };
  Store store(dir / "mnt" / "dpi");
  ASSERT_TRUE(store.Init());
  // Init makes no promise (it runs at every start and creates what is
  // missing): the test starts from a store on the medium.
  ASSERT_FALSE(mount.Control("sync").empty());
  ASSERT_NO_FATAL_FAILURE(Stage(store, kStoreV1));
  ASSERT_TRUE(cut());
  auto promoted = ReadFile(store.root() / "versions" / kStoreV1 / "version");
  ASSERT_TRUE(promoted) << "the promoted version was lost by the cut: "
                        << promoted.error().ToString();
  EXPECT_EQ(*promoted, kStoreV1 + "\n");
  EXPECT_TRUE(fs::is_empty(store.root() / "staging"));
  ASSERT_TRUE(store.Activate(kStoreV1));
  ASSERT_TRUE(cut());
  EXPECT_EQ(CurrentOf(store), kStoreV1) << "the first activation was lost by the cut";
  ASSERT_NO_FATAL_FAILURE(Stage(store, kStoreV2));
  ASSERT_TRUE(store.Activate(kStoreV2));
  ASSERT_TRUE(cut());
  EXPECT_EQ(CurrentOf(store), kStoreV2) << "the swap to " << kStoreV2 << " was lost by the cut";
  ASSERT_TRUE(store.Remove(kStoreV1));
  ASSERT_TRUE(cut());
  EXPECT_FALSE(fs::exists(store.root() / "versions" / kStoreV1)) << "the removal came back";
  ASSERT_TRUE(store.Activate(std::nullopt));
  ASSERT_TRUE(cut());
  EXPECT_EQ(CurrentOf(store), "(none)") << "the deactivation was lost by the cut";
}

}  // namespace
}  // namespace sag::dpi
