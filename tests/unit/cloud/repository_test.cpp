#include "cloud/repository.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "common/image/image_writer.h"
#include "common/image/pki.h"
#include "common/sha256.h"
#include "tests/support/temp_dir.h"

namespace sag::cloud {
namespace {

namespace fs = std::filesystem;

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class RepositoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(image::pki::InitDevPki(tmp_ / "pki").has_value());
    fs::create_directories(repo_);
    std::mt19937 rng(7);
    std::string payload(300000, '\0');
    for (auto& c : payload) c = static_cast<char>(rng());
    std::ofstream(tmp_ / "payload.bin", std::ios::binary) << payload;
  }

  Status Make(image::ImageType type, const std::string& version, const std::string& file,
              const std::string& signer = "signer") {
    image::CreateParams p;
    p.type = type;
    p.version = version;
    p.compatible = {"sag-1000"};
    p.payload = tmp_ / "payload.bin";
    p.key = tmp_ / "pki" / (signer + ".key");
    p.cert = tmp_ / "pki" / (signer + ".pem");
    p.chain = tmp_ / "pki" / (signer + "-chain.pem");
    p.chunk_size = 64U << 10U;
    p.output = repo_ / file;
    return image::CreateImage(p);
  }

  Repository Repo() { return Repository({repo_, {tmp_ / "pki" / "root-ca.pem", {}}}); }

  static HttpRequest Get(const std::string& target, std::optional<std::string> range = {}) {
    HttpRequest r;
    r.method = "GET";
    r.target = target;
    if (range) r.headers.push_back({"Range", *range});
    return r;
  }

  static std::string HeaderOf(const HttpResponse& r, const std::string& name) {
    for (const auto& h : r.headers) {
      if (h.name == name) return h.value;
    }
    return "";
  }

  test::TempDir tmp_;
  fs::path repo_ = tmp_ / "images";
};

TEST_F(RepositoryTest, IndexesVerifiedImagesWithTheirSizeAndHash) {
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "os-1.0.1.sagimg").has_value());
  ASSERT_TRUE(Make(image::ImageType::kDpi, "20201117_1_0-0.0.1", "dpi-1.sagimg").has_value());
  auto repo = Repo();
  ASSERT_TRUE(repo.Scan().has_value());
  ASSERT_EQ(repo.Images().size(), 2U);
  EXPECT_TRUE(repo.problems().empty());
  auto os = repo.Find(image::ImageType::kDevice, "1.0.1");
  ASSERT_TRUE(os);
  EXPECT_EQ(os->file_name, "os-1.0.1.sagimg");
  EXPECT_EQ(os->size, fs::file_size(repo_ / "os-1.0.1.sagimg"));
  auto digest = Sha256::OfFile(repo_ / "os-1.0.1.sagimg");
  ASSERT_TRUE(digest);
  EXPECT_EQ(os->sha256.size(), 64U);
  EXPECT_EQ(os->compatible, std::vector<std::string>{"sag-1000"});
  EXPECT_EQ(Repository::PathOf(*os), "/images/os-1.0.1.sagimg");
  // The type is part of the key: a Device version is not a DPI version.
  EXPECT_FALSE(repo.Find(image::ImageType::kDpi, "1.0.1"));
  EXPECT_TRUE(repo.Find(image::ImageType::kDpi, "20201117_1_0-0.0.1"));
}

TEST_F(RepositoryTest, LeavesOutWhatDoesNotVerifyAndSaysWhy) {
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "good.sagimg").has_value());
  // Signed by a certificate of another root.
  ASSERT_TRUE(image::pki::IssueSigner(tmp_ / "pki", "rogue", image::pki::SignerFlaw::kOtherRoot)
                  .has_value());
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.2", "rogue.sagimg", "rogue").has_value());
  // Truncated.
  const std::string good = ReadAll(repo_ / "good.sagimg");
  std::ofstream(repo_ / "cut.sagimg", std::ios::binary) << good.substr(0, good.size() / 3);
  // A symbolic link is not followed.
  fs::create_symlink(repo_ / "good.sagimg", repo_ / "link.sagimg");
  auto repo = Repo();
  ASSERT_TRUE(repo.Scan().has_value());
  ASSERT_EQ(repo.Images().size(), 1U);
  EXPECT_FALSE(repo.Find(image::ImageType::kDevice, "1.0.2"));
  const auto problems = repo.problems();
  ASSERT_EQ(problems.size(), 3U);
  std::string all;
  for (const auto& p : problems) all += p + "\n";
  EXPECT_NE(all.find("rogue.sagimg: "), std::string::npos) << all;
  EXPECT_NE(all.find("cut.sagimg: "), std::string::npos) << all;
  EXPECT_NE(all.find("link.sagimg: not a regular file"), std::string::npos) << all;
}

TEST_F(RepositoryTest, OneVersionInTwoImagesIsAmbiguousAndBothAreLeftOut) {
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "a.sagimg").has_value());
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "b.sagimg").has_value());
  auto repo = Repo();
  ASSERT_TRUE(repo.Scan().has_value());
  EXPECT_FALSE(repo.Find(image::ImageType::kDevice, "1.0.1"));
  EXPECT_EQ(repo.problems().size(), 2U);
}

TEST_F(RepositoryTest, ServesWholeFilesAndRangesOfIndexedNamesOnly) {
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "os.sagimg").has_value());
  std::ofstream(repo_ / "notes.txt") << "not an image";
  auto repo = Repo();
  ASSERT_TRUE(repo.Scan().has_value());
  const auto size = fs::file_size(repo_ / "os.sagimg");

  auto whole = repo.Serve(Get("/images/os.sagimg"));
  EXPECT_EQ(whole.status, 200);
  ASSERT_TRUE(whole.file);
  EXPECT_EQ(whole.file->offset, 0U);
  EXPECT_EQ(whole.file->length, size);
  EXPECT_EQ(HeaderOf(whole, "Accept-Ranges"), "bytes");

  auto part = repo.Serve(Get("/images/os.sagimg?sig=x", "bytes=100-"));
  EXPECT_EQ(part.status, 206);
  ASSERT_TRUE(part.file);
  EXPECT_EQ(part.file->offset, 100U);
  EXPECT_EQ(part.file->length, size - 100);
  EXPECT_EQ(HeaderOf(part, "Content-Range"),
            "bytes 100-" + std::to_string(size - 1) + "/" + std::to_string(size));

  auto tail = repo.Serve(Get("/images/os.sagimg", "bytes=-10"));
  EXPECT_EQ(tail.status, 206);
  EXPECT_EQ(tail.file->offset, size - 10);

  auto beyond = repo.Serve(Get("/images/os.sagimg", "bytes=" + std::to_string(size) + "-"));
  EXPECT_EQ(beyond.status, 416);
  EXPECT_EQ(HeaderOf(beyond, "Content-Range"), "bytes */" + std::to_string(size));

  for (const std::string t : {"/images/notes.txt", "/images/../images/os.sagimg",
                              "/images/%2e%2e/os.sagimg", "/etc/passwd", "/images/"}) {
    EXPECT_EQ(repo.Serve(Get(t)).status, 404) << t;
  }
  HttpRequest post = Get("/images/os.sagimg");
  post.method = "POST";
  EXPECT_EQ(repo.Serve(post).status, 405);
}

TEST_F(RepositoryTest, AnImageChangedAfterItsScanIsNotServedUnderItsHash) {
  ASSERT_TRUE(Make(image::ImageType::kDevice, "1.0.1", "os.sagimg").has_value());
  auto repo = Repo();
  ASSERT_TRUE(repo.Scan().has_value());
  std::ofstream(repo_ / "os.sagimg", std::ios::app) << "more";
  EXPECT_EQ(repo.Serve(Get("/images/os.sagimg")).status, 503);
  // A rescan indexes it again (and finds it no longer verifies: trailing bytes).
  ASSERT_TRUE(repo.Scan().has_value());
  EXPECT_EQ(repo.problems().size() + repo.Images().size(), 1U);
}

TEST(ParseRangeTest, Forms) {
  auto r = ParseRange("bytes=0-9", 100);
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->offset, 0U);
  EXPECT_EQ((*r)->length, 10U);
  r = ParseRange("bytes=90-200", 100);  // the end is clipped to the file
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->length, 10U);
  r = ParseRange("bytes=-500", 100);  // a suffix longer than the file: all of it
  ASSERT_TRUE(r && *r);
  EXPECT_EQ((*r)->offset, 0U);
  EXPECT_EQ((*r)->length, 100U);
  // Ignored: the whole file is sent.
  for (const char* h : {"items=0-1", "bytes=0-1,5-6", "bytes=5-1", "bytes=x-",
                        "bytes=", "bytes=99999999999999999999-"}) {
    auto ignored = ParseRange(h, 100);
    ASSERT_TRUE(ignored) << h;
    EXPECT_FALSE(*ignored) << h;
  }
  // Unsatisfiable: 416.
  EXPECT_FALSE(ParseRange("bytes=100-", 100));
  EXPECT_FALSE(ParseRange("bytes=-0", 100));
}

}  // namespace
}  // namespace sag::cloud
