// The image repository of sag-cloud: signed images (sag-image create) in one
// directory, indexed by their verified manifests and served to the devices
// over HTTPS with byte ranges (an agent resumes a cut download with Range).
//
// Scan() opens every *.sagimg of the directory, verifies it against the root
// CA as the agent does (signed header, every chunk), and hashes the whole
// file: a job carries the image's size and SHA-256, and an image replaced on
// disk after its scan is refused by the agent instead of installed. A file
// that does not verify is left out and named in problems(), never served as a
// version. Two images of the same type and version are a problem too (the
// API could not say which one a VersionCode means): both are left out.
//
// Serve() answers GET and HEAD of /images/NAME for an indexed NAME only
// (no other path reaches the file system): 200 with the whole file, 206 with
// one range (bytes=A-B, A-, -N), 416 for a range outside the file, 404, 405.
// Several ranges in one request are answered with the whole file (RFC 9110
// allows it; the agent asks for one).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cloud/http_types.h"
#include "common/error.h"
#include "common/image/image.h"

namespace sag::cloud {

struct RepoImage {
  image::ImageType type = image::ImageType::kDevice;
  std::string version;
  std::vector<std::string> compatible;  // hardware models
  std::string build_time;               // the manifest's, ISO 8601 UTC
  std::string file_name;                // "sag-os-1.0.1.sagimg"
  std::uint64_t size = 0;               // of the file, bytes
  std::string sha256;                   // of the file, lower-case hex
  std::string signer;                   // the signing certificate's subject
  std::int64_t mtime_ns = 0;            // of the file when it was scanned
};

class Repository {
 public:
  static constexpr std::size_t kMaxImages = 4096;
  static constexpr std::string_view kPathPrefix = "/images/";

  struct Options {
    std::filesystem::path dir;
    image::Trust trust;  // the root CA the images must chain to
  };

  explicit Repository(Options options);

  // (Re)indexes the directory; a file whose size and mtime did not change
  // since the last scan is not verified and hashed again. Errors: the
  // directory cannot be read (kIo/kNotFound). Bad images are not errors:
  // they are in problems().
  Status Scan();

  [[nodiscard]] std::vector<RepoImage> Images() const;
  [[nodiscard]] std::optional<RepoImage> Find(image::ImageType type,
                                              const std::string& version) const;
  // "file: what is wrong", one per image left out by the last scan.
  [[nodiscard]] std::vector<std::string> problems() const;

  // The path a device fetches `image` from, under the server's base URL.
  [[nodiscard]] static std::string PathOf(const RepoImage& image);

  [[nodiscard]] HttpResponse Serve(const HttpRequest& request) const;

 private:
  Options options_;
  mutable std::mutex mu_;
  std::map<std::string, RepoImage> by_name_;  // file name -> image
  std::vector<std::string> problems_;
};

// A Range header against a file of `size` bytes: the one range it asks for
// as {offset, length}; nullopt when the header should be ignored (absent,
// not "bytes=", several ranges, malformed: the whole file is sent); an
// error value (kInvalidArgument) when it is unsatisfiable (416).
struct ByteRange {
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};
Expected<std::optional<ByteRange>> ParseRange(std::string_view header, std::uint64_t size);

}  // namespace sag::cloud
