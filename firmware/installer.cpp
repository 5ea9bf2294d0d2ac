#include "firmware/installer.h"

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <sstream>
#include <system_error>
#include <thread>

#include "common/aligned_buffer.h"
#include "common/atomic_file.h"
#include "common/base64.h"
#include "common/bounded_queue.h"
#include "common/crc32c.h"
#include "common/json_reader.h"
#include "common/process.h"
#include "common/redact.h"
#include "common/stage_time.h"
#include "common/stream_source.h"
#include "common/version.h"

namespace sag::firmware {

namespace {

using platform::Slot;

constexpr std::size_t kHistoryMax = 64;
constexpr std::uint64_t kMinStateSpace = 1U << 20U;
// Reads back a slot in pieces of this size (a chunk may be far larger).
constexpr std::size_t kReadBackPiece = 64U << 10U;
// The read-back from the medium (O_DIRECT) reads larger pieces: without the
// page cache there is no read-ahead, and each read is one request to the
// device (64 KiB pieces read 256 MiB at a third of the page cache's speed).
// 256 KiB: two read-back threads keep two requests in flight, and each
// piece is memory held for the whole write. 256 KiB pieces read a 256 MiB
// slot back as fast as 512 KiB ones did (0.14-0.21 s of wall time beside
// the writes, loop and tmpfs slots), and the 512 KiB they save paid for
// half of the third chunk buffer (kBuffers in StepWrite) before chunks
// were decoded in place.
constexpr std::size_t kMediumPiece = 256U << 10U;
// Chunks the read-back may trail the writer by (written, in the page cache).
constexpr std::size_t kReadBackLag = 32;
// Threads that read the slot back from the medium: while one waits for the
// device, the other hashes.
constexpr std::size_t kMediumThreads = 2;

Expected<Slot> SlotOf(const std::string& name) { return platform::ParseSlot(name); }

Error ReadBackMismatch(const JobRecord& record, const platform::SlotDevice& slot,
                       std::uint64_t index, std::uint64_t offset) {
  return {Errc::kReadBackMismatch,
          "slot " + record.target_slot + " (" + slot.path().string() + ") chunk " +
              std::to_string(index) + " at offset " + std::to_string(offset) +
              " reads back different from what was written; the storage may be failing"};
}

// Reads `size` bytes of the slot from `offset` in pieces and hands each to
// `take`, which returns false at the first wrong byte. The one read-back
// loop: a chunk reads back right only if every piece was taken and the slot
// did not end early.
template <typename Take>
Status ReadBack(const JobRecord& record, platform::SlotDevice& slot, std::uint64_t index,
                std::uint64_t offset, std::uint64_t size, std::span<std::uint8_t> piece, Take take,
                bool medium = false, StageTimes* times = nullptr) {
  std::uint64_t done = 0;
  while (done < size) {
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(piece.size(), size - done));
    SAG_TRY(const std::size_t got, [&] {
      const StageTimer timer(times, Stage::kReadBack);
      return medium ? slot.ReadMediumAt(offset + done, piece.first(want))
                    : slot.ReadAt(offset + done, piece.first(want));
    }());
    const StageTimer timer(times, Stage::kHashBack);
    if (got == 0 || !take(done, piece.first(got))) {
      return ReadBackMismatch(record, slot, index, offset);
    }
    done += got;
  }
  return Ok();
}

// Reads a chunk just written back from the slot and compares it with the
// bytes written, which were authenticated before the write (see
// ReadBackChunk): as good a check as hashing the slot's bytes, for a copy
// and a compare instead of a SHA-256 pass.
Status CompareBack(const JobRecord& record, platform::SlotDevice& slot, std::uint64_t index,
                   std::uint64_t offset, std::span<const std::uint8_t> data,
                   std::span<std::uint8_t> piece, StageTimes* times) {
  return ReadBack(
      record, slot, index, offset, data.size(), piece,
      [&](std::uint64_t at, std::span<const std::uint8_t> got) {
        return std::memcmp(got.data(), data.data() + at, got.size()) == 0;
      },
      false, times);
}

// Reads chunk `index` back from the slot and checks it against the signed
// manifest: what boots next is what was verified, not what was sent to the
// device. With `written_crc`, the CRC-32C of the buffer the chunk was written
// from, whose bytes were authenticated before the write: their SHA-256
// matched the signed sha256 (a raw chunk), or zstd decoded them from stored
// bytes whose SHA-256 matched the signed zsha256 (a compressed one; zstd's
// output is a function of its input). A chunk that reads back with that CRC
// holds those bytes, unless the medium changed them into others with the
// same CRC (a chance of 2^-32 for random damage, none for a burst of up to
// 32 bits). Not a defence against someone who can write the slot: they
// could as well change it after the read-back.
Status ReadBackChunk(const JobRecord& record, const image::Manifest& m, platform::SlotDevice& slot,
                     std::uint64_t index, std::span<std::uint8_t> piece, bool medium = false,
                     StageTimes* times = nullptr,
                     std::optional<std::uint32_t> written_crc = std::nullopt) {
  const auto& c = m.chunks[index];
  const std::uint64_t offset = index * m.chunk_size;
  Sha256 sha;
  std::uint32_t crc = 0;
  SAG_TRY_STATUS(ReadBack(
      record, slot, index, offset, c.size, piece,
      [&](std::uint64_t /*at*/, std::span<const std::uint8_t> got) {
        if (written_crc) {
          crc = Crc32c(got, crc);
        } else {
          sha.Update(got);
        }
        return true;
      },
      medium, times));
  if (written_crc ? crc != *written_crc : sha.Final() != c.sha256) {
    auto e = ReadBackMismatch(record, slot, index, offset);
    return medium ? e.WithContext("read from the medium") : e;
  }
  return Ok();
}

// A record of `journal` as a JobRecord; what is wrong with it names the file.
Expected<JobRecord> RecordFrom(const Journal& journal, const nlohmann::json& doc) {
  auto rec = JobRecord::FromJson(doc);
  if (rec) return rec;
  if (rec.error().code() == Errc::kJournalNewerFormat) {
    return journal.NewerFormat(rec.error().message());
  }
  return Error(rec.error().code(),
               "job journal " + journal.path().string() + ": " + rec.error().message() +
                   "; move the file aside to let the agent start clean (that job is lost)");
}

}  // namespace

DeviceInstaller::DeviceInstaller(InstallerOptions options, Platform platform, ProgressFn progress)
    : options_(std::move(options)),
      platform_(std::move(platform)),
      progress_(std::move(progress)),
      journal_(options_.state_dir / "device-job.json") {
  // Cancel() stops a download that waits for a stalled server too.
  if (options_.download.cancel == nullptr) options_.download.cancel = &cancel_;
}

// ---------------------------------------------------------------- records

Status DeviceInstaller::Save(JobRecord& record, JobEvent event) {
  SAG_TRY(const JobState next, Transition(record.state, event));
  const JobState prev = record.state;
  record.state = next;
  record.updated_at = NowUtc();
  record.history.push_back(record.updated_at + " " + std::string(JobStateName(next)));
  if (auto st = journal_.Save(record.ToJson()); !st) {
    record.state = prev;
    return std::move(st).error().WithContext("recording job " + record.id);
  }
  spdlog::info("job {}: {} -> {}", record.id, JobStateName(prev), JobStateName(next));
  Report(record, 0, 0);
  return Ok();
}

Status DeviceInstaller::SaveProgress(JobRecord& record) {
  record.updated_at = NowUtc();
  return journal_.Save(record.ToJson());
}

Status DeviceInstaller::Fail(JobRecord& record, Error error) {
  spdlog::error("job {}: {}", record.id, error.ToString());
  record.error = std::move(error);
  SAG_TRY_STATUS(Save(record, JobEvent::kFailed));
  return ArchiveFinished(record);
}

bool DeviceInstaller::Stopping() const {
  return cancel_ || (job_cancel_ != nullptr && job_cancel_->stopping());
}

Error DeviceInstaller::CancelledError(const JobRecord& record) {
  return {Errc::kCancelled, "job " + record.id + " was cancelled on request in state " +
                                std::string(JobStateName(record.state)) +
                                ", before the trial boot was set: slot " + record.target_slot +
                                " is left not bootable and slot " + record.from_slot + " (" +
                                record.from_version + ") runs on"};
}

void DeviceInstaller::Report(const JobRecord& record, std::uint64_t done, std::uint64_t total) {
  if (progress_) progress_(record, Progress{record.state, done, total});
}

Expected<std::optional<JobRecord>> DeviceInstaller::LastJob() {
  SAG_TRY(auto doc, journal_.Load());
  if (doc) {
    SAG_TRY(auto rec, RecordFrom(journal_, *doc));
    return std::optional<JobRecord>(std::move(rec));
  }
  const Journal last(journal_.path().string() + ".last");
  SAG_TRY(auto prev, last.Load());
  if (!prev) return std::optional<JobRecord>();
  SAG_TRY(auto rec, RecordFrom(last, *prev));
  return std::optional<JobRecord>(std::move(rec));
}

// Finished jobs are kept by id (bounded), so a job offered again is answered
// with its outcome instead of being run twice.
Status DeviceInstaller::ArchiveFinished(const JobRecord& record) {
  const auto path = HistoryPath();
  SAG_TRY(nlohmann::json list, LoadHistory());
  // Idempotent: a cut between this write and the journal's archive repeats it.
  for (auto it = list.begin(); it != list.end();) {
    it = (*it)["id"] == record.id ? list.erase(it) : it + 1;
  }
  // The history outlives the job: its source and error lose their URLs'
  // query strings and userinfo (a signed URL is a credential). The running
  // job's journal keeps the full source, which a resumed download needs.
  auto finished = record.ToJson();
  finished["source"] = RedactUrl(record.source);
  if (finished.contains("error") && finished["error"].is_object()) {
    finished["error"]["message"] = RedactUrls(finished["error"].value("message", ""));
  }
  list.push_back(std::move(finished));
  while (list.size() > kHistoryMax) list.erase(list.begin());
  SAG_TRY_STATUS(WriteFileAtomic(path, list.dump(1) + "\n", 0600));
  SAG_TRY_STATUS(journal_.Archive());
  // The signed header is only needed while a job runs. A cut before this
  // leaves a file that the next job replaces.
  std::error_code ec;
  std::filesystem::remove(HeaderPath(), ec);
  return Ok();
}

// The signed header of the running job, stored once beside the journal (the
// journal itself is rewritten at every checkpoint and stays small).
std::filesystem::path DeviceInstaller::HeaderPath() const {
  return options_.state_dir / "device-job.header.json";
}

Status DeviceInstaller::SaveHeader(const image::VerifiedHeader& header) {
  const nlohmann::json doc = {{"manifest_json", header.manifest_json},
                              {"signature_der_b64", Base64Encode(header.signature_der)}};
  return WriteFileAtomic(HeaderPath(), doc.dump() + "\n", 0600);
}

Expected<image::VerifiedHeader> DeviceInstaller::LoadHeader(const JobRecord& record) {
  const auto path = HeaderPath();
  auto corrupt = [&](const std::string& what) {
    return Error(Errc::kJournalCorrupt, "the stored image header of job " + record.id + " (" +
                                            path.string() + ") " + what +
                                            "; start the job again with a new id");
  };
  const std::uint64_t max =
      2 * (options_.limits.max_manifest_bytes + options_.limits.max_signature_bytes) + 4096;
  auto text = ReadFile(path, max);
  if (!text) return corrupt("cannot be read: " + text.error().message());
  const auto doc = nlohmann::json::parse(*text, nullptr, false);
  if (!doc.is_object() || !doc.contains("manifest_json") || !doc["manifest_json"].is_string() ||
      !doc.contains("signature_der_b64") || !doc["signature_der_b64"].is_string()) {
    return corrupt("is not a header record");
  }
  std::string manifest = doc["manifest_json"].get<std::string>();
  if (ToHex(Sha256::Of(manifest)) != record.header_sha256) return corrupt("belongs to another job");
  SAG_TRY(auto sig, Base64Decode(doc["signature_der_b64"].get<std::string>()));
  return image::VerifyHeader(std::move(manifest), std::move(sig), options_.trust, options_.limits);
}

std::filesystem::path DeviceInstaller::HistoryPath() const {
  return options_.state_dir / "device-jobs.json";
}

// The finished jobs, checked: an array of objects, each with a string id (so
// that the lookups below cannot throw). Absent = none.
Expected<nlohmann::json> DeviceInstaller::LoadHistory() const {
  const auto path = HistoryPath();
  auto text = ReadFile(path, 4U << 20U);
  if (!text) {
    if (text.error().code() == Errc::kNotFound) return nlohmann::json::array();
    return std::move(text).error().WithContext("reading the Device job history");
  }
  const std::string what = "Device job history " + path.string();
  auto corrupt = [&](const Error& e) {
    return Error(Errc::kJournalCorrupt,
                 e.message() + "; move the file aside (the record of past Device jobs is lost)");
  };
  auto doc = ParseJson(*text, what, Errc::kJournalCorrupt, {.max_bytes = 4U << 20U});
  if (!doc) return corrupt(doc.error());
  if (!doc->is_array()) {
    return corrupt(Error(Errc::kJournalCorrupt,
                         what + ": expected an array, got " + std::string(JsonTypeName(*doc))));
  }
  for (std::size_t i = 0; i < doc->size(); ++i) {
    JsonReader r((*doc)[i], what + ": job " + std::to_string(i), Errc::kJournalCorrupt);
    (void)r.Str("id");
    if (auto st = r.Finish(); !st) return corrupt(st.error());
  }
  return std::move(*doc);
}

Expected<std::optional<JobRecord>> DeviceInstaller::Lookup(const std::string& id) {
  SAG_TRY(auto current, journal_.Load());
  if (current) {
    SAG_TRY(auto rec, RecordFrom(journal_, *current));
    if (rec.id == id) return std::optional<JobRecord>(std::move(rec));
  }
  return FindInHistory(id);
}

Expected<std::optional<JobRecord>> DeviceInstaller::FindInHistory(const std::string& id) {
  SAG_TRY(const auto doc, LoadHistory());
  for (const auto& j : doc) {
    if (j["id"] != id) continue;
    SAG_TRY(auto rec, JobRecord::FromJson(j));
    return std::optional<JobRecord>(std::move(rec));
  }
  return std::optional<JobRecord>();
}

// slots.json: which image each slot holds once committed.
Status DeviceInstaller::RecordSlot(Slot slot, const JobRecord& record) {
  const auto path = options_.state_dir / "slots.json";
  nlohmann::json doc = nlohmann::json::object();
  if (auto text = ReadFile(path, 1U << 20U)) {
    auto parsed = nlohmann::json::parse(*text, nullptr, false);
    if (parsed.is_object()) doc = std::move(parsed);
  }
  const std::string name(platform::SlotName(slot));
  if (record.version.empty()) {
    doc.erase(name);
  } else {
    doc[name] = {{"version", record.version},
                 {"payload_sha256", record.payload_sha256},
                 {"payload_size", record.payload_size},
                 {"job", record.id},
                 {"committed_at", NowUtc()}};
  }
  return WriteFileAtomic(path, doc.dump(2) + "\n", 0644);
}

Expected<std::map<Slot, DeviceInstaller::SlotView>> DeviceInstaller::Slots() {
  std::map<Slot, SlotView> out;
  const auto slots_path = options_.state_dir / "slots.json";
  if (auto text = ReadFile(slots_path, 1U << 20U)) {
    const std::string what = "slot records " + slots_path.string();
    SAG_TRY(const auto doc, ParseJson(*text, what, Errc::kJournalCorrupt));
    JsonReader r(doc, what, Errc::kJournalCorrupt);
    for (const Slot slot : {Slot::kA, Slot::kB}) {
      if (auto rec = r.OptObj(platform::SlotName(slot))) {
        out[slot].version = rec->OptStr("version").value_or("");
      }
    }
    if (auto st = r.Finish(); !st) {
      return Error(Errc::kJournalCorrupt,
                   st.error().message() + "; move the file aside and commit the slot again");
    }
  }
  auto booted = platform_.boot->BootedSlot();
  if (booted && out[*booted].version.empty()) {
    if (auto v = CurrentVersion()) out[*booted].version = *v;
  }
  // A slot never written by a job (the factory image) has no record; the
  // last job that moved from it says what it ran.
  if (auto last = LastJob(); last && *last) {
    const JobRecord& j = **last;
    if (auto from = platform::ParseSlot(j.from_slot);
        from && out[*from].version.empty() && j.target_slot != j.from_slot) {
      out[*from].version = j.from_version;
    }
  }
  auto env = platform_.boot->ReadState();
  for (const Slot slot : {Slot::kA, Slot::kB}) {
    SlotView& view = out[slot];
    if (!env) {
      view.state = "unknown";
    } else {
      view.state = env->Left(slot) > 0 ? "good" : "bad";
    }
  }
  // The unfinished job says more about its target than the environment.
  SAG_TRY(auto doc, journal_.Load());
  if (doc) {
    SAG_TRY(const auto rec, RecordFrom(journal_, *doc));
    auto target = platform::ParseSlot(rec.target_slot);
    if (!IsTerminal(rec.state) && target) {
      SlotView& view = out[*target];
      switch (rec.state) {
        case JobState::kPending:
        case JobState::kWriting:
        case JobState::kVerifying:
        case JobState::kActivating:
          view = {rec.version, "writing"};
          break;
        case JobState::kRebooting:
        case JobState::kHealthChecking:
          view = {rec.version, "trial"};
          break;
        case JobState::kRollingBack:
          view.state = "bad";
          break;
        default:  // Committing: marked good, its record follows
          if (view.version.empty()) view.version = rec.version;
          break;
      }
    }
  }
  return out;
}

Expected<std::string> DeviceInstaller::CurrentVersion() {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  const auto slots_path = options_.state_dir / "slots.json";
  if (auto text = ReadFile(slots_path, 1U << 20U)) {
    const std::string what = "slot records " + slots_path.string();
    SAG_TRY(const auto doc, ParseJson(*text, what, Errc::kJournalCorrupt));
    JsonReader r(doc, what, Errc::kJournalCorrupt);
    std::optional<std::string> version;
    if (auto slot = r.OptObj(platform::SlotName(booted))) version = slot->OptStr("version");
    if (auto st = r.Finish(); !st) {
      return Error(Errc::kJournalCorrupt,
                   st.error().message() + "; move the file aside and commit the slot again");
    }
    if (version) return *version;
  }
  auto text = ReadFile(options_.os_release, 64U << 10U);
  if (!text) {
    return std::move(text).error().WithContext("no installed version recorded for slot " +
                                               std::string(platform::SlotName(booted)) +
                                               " and no VERSION_ID");
  }
  std::istringstream in(*text);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VERSION_ID=")) {
      std::string v = line.substr(11);
      if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
      return v;
    }
  }
  return Error(Errc::kSystemInfo, options_.os_release.string() + " has no VERSION_ID line");
}

// ---------------------------------------------------------------- start

Status DeviceInstaller::CheckPolicy(const JobSpec& spec, const image::VerifiedHeader& header,
                                    Slot target) {
  const auto& m = header.manifest;
  if (m.type != image::ImageType::kDevice) {
    return Error(Errc::kWrongType, "the image is a " + std::string(image::ImageTypeName(m.type)) +
                                       " image; a Device job needs VersionType=Device");
  }
  if (std::find(m.compatible.begin(), m.compatible.end(), options_.model) == m.compatible.end()) {
    std::string list;
    for (const auto& c : m.compatible) list += (list.empty() ? "" : ", ") + c;
    return Error(Errc::kIncompatibleModel, "image " + m.version + " is for " + list +
                                               "; this appliance is a " + options_.model);
  }
  SAG_TRY(const auto current_text, CurrentVersion());
  SAG_TRY(const auto wanted, Version::Parse(VersionKind::kDevice, m.version));
  auto current = Version::Parse(VersionKind::kDevice, current_text);
  // A running version that does not parse cannot be compared: the check
  // fails closed, or any signed image (an old one included) would go in.
  if (!current && !spec.allow_downgrade) {
    return Error(Errc::kVersionUnparsable,
                 "the running version '" + current_text + "' (VERSION_ID in " +
                     options_.os_release.string() +
                     ") is not a Device version this agent can compare with " + m.version + " (" +
                     current.error().message() +
                     "); to install it anyway, run `sag-agent install --allow-downgrade` or send "
                     "the job with allow_downgrade set");
  }
  if (current && wanted <= *current && !spec.allow_downgrade) {
    return Error(Errc::kVersionTooOld, "image version " + m.version +
                                           " is not newer than the running " + current_text +
                                           "; pick a newer version or allow a downgrade");
  }
  SAG_TRY(const auto slot_size, platform_.slots.at(target)->Size());
  if (m.payload_size > slot_size) {
    return Error(Errc::kSlotTooSmall, "the payload is " + std::to_string(m.payload_size) +
                                          " bytes but slot " +
                                          std::string(platform::SlotName(target)) + " (" +
                                          platform_.slots.at(target)->path().string() + ") holds " +
                                          std::to_string(slot_size));
  }
  SAG_TRY(const auto free, platform_.system->FreeSpace(options_.state_dir));
  if (free < kMinStateSpace) {
    return Error(Errc::kNoSpace, options_.state_dir.string() + " has " + std::to_string(free) +
                                     " bytes free; the job journal needs at least 1 MiB");
  }
  return Ok();
}

Expected<JobRecord> DeviceInstaller::Start(const JobSpec& spec) {
  // A job seen before is answered before its source is opened (it may be
  // gone); the reader that checks the header streams the payload too.
  SAG_TRY(auto seen, Lookup(spec.id));
  if (seen) return *seen;
  net::DownloadOptions download = options_.download;
  download.log_context = [context = "job " + spec.id + ": Downloading"] { return context; };
  auto source = OpenStreamSource(spec.source, 0, download);
  if (!source)
    return StartRefused(spec,
                        std::move(source).error().WithContext("opening " + RedactUrl(spec.source)));
  image::ImageReader reader(**source, options_.trust, options_.limits);
  auto header = reader.ReadHeader();
  if (!header)
    return StartRefused(
        spec, std::move(header).error().WithContext("checking " + RedactUrl(spec.source)));
  return Start(spec, reader, **header);
}

Expected<JobRecord> DeviceInstaller::StartRefused(const JobSpec& spec, Error error) {
  SAG_TRY(auto current, journal_.Load());
  if (current) {
    SAG_TRY(auto rec, RecordFrom(journal_, *current));
    if (!IsTerminal(rec.state)) {
      return Error(Errc::kJobConflict, "job " + rec.id + " is still " +
                                           std::string(JobStateName(rec.state)) +
                                           "; wait for it to finish before starting " + spec.id);
    }
    // A finished job whose move to the history was cut short.
    SAG_TRY_STATUS(ArchiveFinished(rec));
  }
  JobRecord record = NewRecord(spec);
  record.error = std::move(error);
  record.state = JobState::kFailed;
  spdlog::error("job {} refused: {}", spec.id, record.error->ToString());
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  record.from_slot = platform::SlotName(booted);
  record.target_slot = platform::SlotName(platform::OtherSlot(booted));
  if (auto v = CurrentVersion()) record.from_version = *v;
  SAG_TRY_STATUS(ArchiveFinished(record));
  return record;
}

JobRecord DeviceInstaller::NewRecord(const JobSpec& spec) {
  JobRecord record;
  record.id = spec.id;
  record.source = spec.source;
  record.allow_downgrade = spec.allow_downgrade;
  record.reboot = spec.reboot;
  record.started_at = NowUtc();
  record.updated_at = record.started_at;
  record.history.push_back(record.started_at + " Pending");
  return record;
}

Expected<JobRecord> DeviceInstaller::Start(const JobSpec& spec, image::ImageReader& reader,
                                           const image::VerifiedHeader& h, JobCancel* cancel) {
  // The cancel point holds for this call only: a job resumed at the next
  // start has none.
  job_cancel_ = cancel;
  struct Reset {
    DeviceInstaller* self;
    ~Reset() { self->job_cancel_ = nullptr; }
  } reset{this};
  SAG_TRY(auto current, journal_.Load());
  if (current) {
    SAG_TRY(auto rec, RecordFrom(journal_, *current));
    if (rec.id == spec.id) return rec;
    if (IsTerminal(rec.state)) {
      // A finished job whose move to the history was cut short.
      SAG_TRY_STATUS(ArchiveFinished(rec));
      return Start(spec, reader, h, cancel);
    }
    return Error(Errc::kJobConflict, "job " + rec.id + " is still " +
                                         std::string(JobStateName(rec.state)) +
                                         "; wait for it to finish before starting " + spec.id);
  }
  SAG_TRY(auto seen, FindInHistory(spec.id));
  if (seen) return *seen;

  JobRecord record = NewRecord(spec);

  auto refuse = [&](const Error& e) -> Expected<JobRecord> {
    // Nothing was touched; the refusal is remembered under the job id (as
    // Cancelled when a cancel came first).
    record.error = e;
    if (job_cancel_ != nullptr && job_cancel_->EndFailed()) record.error = CancelledError(record);
    record.state = JobState::kFailed;
    spdlog::error("job {} refused: {}", spec.id, e.ToString());
    if (auto st = ArchiveFinished(record); !st) return std::move(st).error();
    return record;
  };

  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  const Slot target = platform::OtherSlot(booted);
  record.from_slot = platform::SlotName(booted);
  record.target_slot = platform::SlotName(target);
  if (auto v = CurrentVersion()) record.from_version = *v;

  {
    record.version = h.manifest.version;
    if (auto st = CheckPolicy(spec, h, target); !st) return refuse(std::move(st).error());

    record.header_sha256 = ToHex(h.manifest_sha256);
    record.payload_offset = h.payload_offset;
    record.chunks_total = h.manifest.chunks.size();
    record.payload_size = h.manifest.payload_size;
    record.payload_sha256 = ToHex(h.manifest.payload_sha256);
    if (UsesDelta(spec.source, h.manifest)) record.delta = DeltaRecord{};
    // The header first: a journal record always has its header beside it.
    SAG_TRY_STATUS(SaveHeader(h));
    SAG_TRY_STATUS(journal_.Save(record.ToJson()));
    // Logged once the job is on record: a kill before the save starts it
    // afresh, and this line is not written twice for one start.
    spdlog::info("job {}: Device {} -> {} into slot {} ({} bytes, {} chunks, signed by {})",
                 spec.id, record.from_version, record.version, record.target_slot,
                 record.payload_size, record.chunks_total, h.signer.subject);
  }
  auto st = job_cancel_ != nullptr && job_cancel_->requested() ? Status(CancelledError(record))
                                                               : StepPrepare(record);
  if (!st) {
    Error e = std::move(st).error();
    if (job_cancel_ != nullptr && job_cancel_->EndFailed()) e = CancelledError(record);
    if (auto f = Fail(record, std::move(e)); !f) return std::move(f).error();
    return record;
  }
  // StepWrite streams from `reader` (the first run only: see fresh_reader_).
  fresh_reader_ = &reader;
  auto done = Run(std::move(record));
  fresh_reader_ = nullptr;
  return done;
}

// The target slot is made unbootable before its first byte changes (and the
// running slot committed), so a half-written slot can never be booted.
Status DeviceInstaller::StepPrepare(JobRecord& record) {
  EnterStep(record);
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  SAG_TRY(const Slot from, SlotOf(record.from_slot));
  SAG_TRY_STATUS(platform_.boot->MarkGood(from, options_.trial_attempts));
  SAG_TRY_STATUS(platform_.boot->MarkBad(target));
  JobRecord cleared;  // the target no longer holds what slots.json said
  SAG_TRY_STATUS(RecordSlot(target, cleared));
  // Nor what its block-hash index describes (kept for delta installs).
  std::error_code ec;
  if (std::filesystem::remove(SlotIndexPath(target), ec))
    SAG_TRY_STATUS(FsyncDir(options_.state_dir));
  return Save(record, JobEvent::kSlotPrepared);
}

// ---------------------------------------------------------------- run

Expected<JobRecord> DeviceInstaller::Run(JobRecord record) {
  for (int guard = 0; guard < 32 && !IsTerminal(record.state); ++guard) {
    Status st = Ok();
    // A cancel is checked at every step boundary before the trial boot;
    // StepActivate decides the last one under the cancel point's lock.
    const bool before_trial = record.state == JobState::kWriting ||
                              record.state == JobState::kVerifying ||
                              record.state == JobState::kActivating;
    if (before_trial && job_cancel_ != nullptr && job_cancel_->requested()) {
      st = CancelledError(record);
    }
    // A cancelled step is not run (kFailed: nothing to do).
    switch (st ? record.state : JobState::kFailed) {
      case JobState::kPending:
        st = Error(Errc::kInternal, "a Pending job is prepared by Start");
        break;
      case JobState::kWriting:
        st = StepWrite(record);
        break;
      case JobState::kVerifying:
        st = StepVerify(record);
        break;
      case JobState::kActivating:
        st = StepActivate(record);
        break;
      case JobState::kRebooting:
        st = StepReboot(record);
        break;
      case JobState::kHealthChecking:
        st = StepHealth(record);
        break;
      case JobState::kCommitting:
        st = StepCommit(record);
        break;
      case JobState::kRollingBack:
        st = StepRollingBack(record);
        break;
      case JobState::kCommitted:
      case JobState::kRolledBack:
      case JobState::kFailed:
        break;
    }
    if (!st) {
      Error e = std::move(st).error();
      // Failing is possible only before the trial boot is set; later states
      // are resolved by the boot that follows.
      const bool can_fail = static_cast<bool>(Transition(record.state, JobEvent::kFailed));
      // A cancel accepted before the job ended ends it Cancelled, whatever
      // else stopped it; decided under the cancel point's lock, so a cancel
      // that comes later is refused.
      const bool cancelled = can_fail && job_cancel_ != nullptr && job_cancel_->EndFailed();
      if (cancelled) {
        e = CancelledError(record);
      } else if (e.code() == Errc::kCancelled) {
        return record;  // the daemon stops: resumes at next start
      }
      if (can_fail) {
        SAG_TRY_STATUS(Fail(record, e));
        return record;
      }
      return e;
    }
    // A step that asked for a reboot (or waits for one) ends this run.
    if (record.state == JobState::kRebooting || record.state == JobState::kRollingBack) {
      SAG_TRY(const auto boot_id, platform_.system->BootId());
      if (boot_id == record.boot_id) return record;
    }
  }
  return record;
}

void DeviceInstaller::EnterStep(const JobRecord& record) {
  if (options_.on_step) options_.on_step(record.id, JobStateName(record.state));
}

Expected<JobRecord> DeviceInstaller::Abandon(const std::string& id, Error error) {
  SAG_TRY(auto doc, journal_.Load());
  std::optional<JobRecord> found;
  if (doc) {
    SAG_TRY(auto rec, RecordFrom(journal_, *doc));
    if (rec.id == id && !IsTerminal(rec.state)) found = std::move(rec);
  }
  if (!found) return Error(Errc::kJobUnknown, "no unfinished Device job " + id + " to end");
  JobRecord& record = *found;
  spdlog::error("job {}: ended in {}: {}", id, JobStateName(record.state), error.ToString());
  if (Transition(record.state, JobEvent::kFailed)) {
    // Before the trial: the target slot is still marked bad and the running
    // slot first; keep its tries full, as Resume() would.
    SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
    SAG_TRY_STATUS(platform_.boot->MarkGood(booted, options_.trial_attempts));
    SAG_TRY_STATUS(Fail(record, std::move(error)));
    return record;
  }
  if (record.state == JobState::kHealthChecking) {
    // On the trial boot: as a failed health check, back to the old slot.
    record.error = std::move(error);
    SAG_TRY(record.boot_id, platform_.system->BootId());
    SAG_TRY_STATUS(Save(record, JobEvent::kUnhealthy));
    SAG_TRY_STATUS(StepRollingBack(record));
    return record;
  }
  return Error(Errc::kInvalidArgument, "Device job " + id + " in state " +
                                           std::string(JobStateName(record.state)) +
                                           " is decided by the next boot, not ended here");
}

Expected<std::optional<JobRecord>> DeviceInstaller::Resume() {
  SAG_TRY(auto doc, journal_.Load());
  if (!doc) {
    // No job: the running slot is the committed one; keep its boot counter
    // full so the bootloader never gives up on it.
    SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
    SAG_TRY(const auto state, platform_.boot->ReadState());
    if (state.Left(booted) < options_.trial_attempts || state.order.front() != booted) {
      SAG_TRY_STATUS(platform_.boot->MarkGood(booted, options_.trial_attempts));
    }
    return std::optional<JobRecord>();
  }
  SAG_TRY(auto record, RecordFrom(journal_, *doc));
  if (IsTerminal(record.state)) {
    // Cut between recording the outcome and moving it to the history.
    SAG_TRY_STATUS(ArchiveFinished(record));
    return std::optional<JobRecord>(std::move(record));
  }
  spdlog::info("job {}: resuming in state {}", record.id, JobStateName(record.state));
  const bool before_trial =
      record.state == JobState::kPending || record.state == JobState::kWriting ||
      record.state == JobState::kVerifying || record.state == JobState::kActivating;
  if (before_trial) {
    SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
    SAG_TRY(const Slot from, SlotOf(record.from_slot));
    if (booted == from) {
      // Still on the running slot: the bootloader counted this boot against
      // it; refill its tries so it stays a safe fallback for the trial.
      SAG_TRY_STATUS(platform_.boot->MarkGood(from, options_.trial_attempts));
    } else if (record.state == JobState::kActivating) {
      // The trial was set but the cut came before it was recorded, and the
      // bootloader has already started the new slot: record the trial and
      // take it from there.
      record.boot_id.clear();
      SAG_TRY_STATUS(Save(record, JobEvent::kTrialSet));
    }
  }
  if (record.state == JobState::kPending) {
    // Cut before the slot was prepared: prepare again (StepWrite verifies
    // the stored header before writing).
    if (auto st = StepPrepare(record); !st) {
      SAG_TRY_STATUS(Fail(record, std::move(st).error()));
      return std::optional<JobRecord>(record);
    }
  }
  SAG_TRY(auto done, Run(std::move(record)));
  return std::optional<JobRecord>(std::move(done));
}

// ---------------------------------------------------------------- write

Status DeviceInstaller::StepWrite(JobRecord& record) {
  EnterStep(record);
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  if (record.next_chunk > record.chunks_total) {
    return Error(Errc::kJournalCorrupt, "journal says chunk " + std::to_string(record.next_chunk) +
                                            " of " + std::to_string(record.chunks_total));
  }
  // Cut after the last checkpoint but before the transition was recorded:
  // every chunk is already durable in the slot.
  if (record.next_chunk == record.chunks_total) return Save(record, JobEvent::kWritten);
  // A format 2 image from a URL: a delta install (delta_install.cpp), unless
  // the server turned out not to honour Range and a full one is configured.
  if (record.delta && !record.delta->full_fallback) {
    if (fresh_reader_ != nullptr) {
      // Only the header was needed from that stream: stop its read-ahead.
      fresh_reader_->StopSource();
      fresh_reader_ = nullptr;
    }
    SAG_TRY(const bool done, StepWriteDelta(record));
    if (done) return Ok();
  }
  platform::SlotDevice* slot = platform_.slots.at(target);
  SAG_TRY(auto writer, slot->OpenWriter());

  // One chunk table in memory: the image's own header when streaming from
  // the start, the stored header when resuming. Each is verified against the
  // pinned root, and must be the header this job was started with.
  const std::uint64_t start_chunk = record.next_chunk;
  std::optional<image::VerifiedHeader> stored;
  std::uint64_t offset = 0;
  if (start_chunk > 0) {
    SAG_TRY(stored, LoadHeader(record));
    if (stored->manifest.chunks.size() != record.chunks_total) {
      return Error(Errc::kJournalCorrupt, "the stored header of job " + record.id + " has " +
                                              std::to_string(stored->manifest.chunks.size()) +
                                              " chunks, the journal " +
                                              std::to_string(record.chunks_total));
    }
    offset = record.payload_offset + stored->manifest.chunks[start_chunk].offset;
    spdlog::info("job {}: resuming the write at chunk {} of {}", record.id, start_chunk,
                 record.chunks_total);
  }
  // The reader Start() verified the header with streams the payload of a
  // fresh job; a resumed write opens the source again at its chunk.
  image::ImageReader* fresh = start_chunk == 0 ? fresh_reader_ : nullptr;
  fresh_reader_ = nullptr;
  std::unique_ptr<image::ByteSource> source;
  if (fresh == nullptr) {
    net::DownloadOptions download = options_.download;
    download.log_context = [context = "job " + record.id + ": " +
                                      std::string(JobStateName(record.state))] { return context; };
    SAG_TRY(source, OpenStreamSource(record.source, offset, download));
  }
  // Format 4, resumed: the frames need the image's dictionary, which lies
  // before the first frame. Fetched alone (one range, or read from the file)
  // and checked against its signed SHA-256 before use.
  std::vector<std::uint8_t> dictionary;
  if (start_chunk > 0 && stored->manifest.dict) {
    const auto& d = *stored->manifest.dict;
    if (IsUrl(record.source)) {
      auto got = net::FetchRangeExact(record.source, record.payload_offset + d.offset, d.length,
                                      "the dictionary", options_.download);
      if (got) {
        SAG_TRY(dictionary, image::DecodeDictionary(*got, stored->manifest));
      } else if (got.error().code() == Errc::kNetRangeUnsupported) {
        // A server without Range (the full fallback): a stream from the
        // dictionary's offset, stopped once the dictionary is read.
        SAG_TRY(auto stream, OpenStreamSource(record.source, record.payload_offset + d.offset,
                                              options_.download));
        auto read = image::ReadDictionary(*stream, stored->manifest);
        stream->Stop();
        if (!read) return std::move(read).error();
        dictionary = std::move(*read);
      } else {
        return std::move(got).error().WithContext(RedactUrl(record.source));
      }
    } else {
      SAG_TRY(auto file, image::FileSource::Open(record.source, record.payload_offset + d.offset));
      SAG_TRY(dictionary, image::ReadDictionary(*file, stored->manifest));
    }
  }

  // Decoded-chunk buffers (see the stages below). Three. With two, each
  // buffer went through decode, hash and write in turn: the reader could
  // decode chunk i+1 only once the writer had released chunk i-1, so the
  // hasher, the slowest stage, waited for the writer's write and for two
  // wake-ups per chunk (perf sched, 256 MiB on a loop slot: the hasher ran
  // 232 ms and waited 246 ms). With three, the next chunk is decoded while
  // one is hashed and one written: 256 MiB installs in 0.85-0.90 of the
  // time on file, loop and tmpfs slots (medians of per-pair ratios against
  // two buffers, docs/device-upgrade.md). Each buffer is a chunk and the
  // room to decode one in place (1 MiB + 136 KiB), and no buffer holds
  // compressed bytes: peak RSS 15.0-15.3 MiB (15.5-15.9 MiB with a separate
  // compressed buffer).
  constexpr std::size_t kBuffers = 3;
  // A chunk that holds a compressed block is refused unless its compressed
  // bytes match their signed hash (zsha256, before it is decompressed or
  // written); its decompressed content, which zstd derives from those
  // bytes, is not hashed a second time (a third of a compressible install's
  // CPU time). Every chunk this run writes is thus authenticated in memory
  // before the write, raw or compressed, and read back against the buffer
  // it was written from (see the read-back below).
  constexpr auto kContentCheck = image::ContentCheck::kDeferCompressed;
  std::optional<image::ImageReader> image_reader;
  std::optional<image::ChunkReader> chunk_reader;
  const image::Manifest* manifest = nullptr;
  image::ImageReader* stream = fresh;
  StageTimes times;
  if (fresh != nullptr) {
    fresh->SetChunkReading(kBuffers, kContentCheck);
    fresh->SetStageTimes(&times);
  }
  if (start_chunk == 0) {
    if (stream == nullptr) {
      stream =
          &image_reader.emplace(*source, options_.trust, options_.limits, kBuffers, kContentCheck);
      stream->SetStageTimes(&times);
    }
    auto& reader = *stream;
    auto h = reader.ReadHeader();
    if (!h) return std::move(h).error().WithContext("reading " + RedactUrl(record.source));
    if (ToHex((*h)->manifest_sha256) != record.header_sha256) {
      return Error(Errc::kImageContainer,
                   RedactUrl(record.source) + " changed since the job started; start a new job");
    }
    manifest = &(*h)->manifest;
    reader.ReleaseHeaderText();
  } else {
    manifest = &stored->manifest;
    std::string().swap(stored->manifest_json);  // stored; only the table is needed
    std::string().swap(stored->signature_der);
    chunk_reader.emplace(*source, *manifest, start_chunk, options_.limits, kBuffers, kContentCheck,
                         &times, dictionary);
  }
  // Parsing the manifest left its JSON tree's pages free but resident; give
  // them back before the chunk buffers are allocated, so that the parse's
  // high-water mark does not add to them.
  ::malloc_trim(0);
  const image::Manifest& m = *manifest;

  // The stages overlap: the source (a fetch thread for URLs), this thread
  // reading and decompressing, the reader hashing a raw chunk on another core
  // while this thread reads the next, a writer thread, read-back threads and
  // a checkpoint thread. The writer writes straight from the reader's chunk
  // buffers: before the reader reads chunk j into the buffer chunk
  // j - kBuffers was in, its gate waits until the writer released that chunk
  // (wrote it, and with boot.read_back: cache compared it). A decompressed
  // chunk is yielded without a read-ahead (image::ChunkPipeline), so it is
  // written while the next one is decompressed. Memory: kBuffers chunk
  // buffers (each decoded in place), and two read-back pieces.
  struct Block {
    std::size_t index = 0;
    std::span<const std::uint8_t> data;
  };
  BoundedQueue<Block> full_blocks(kBuffers - 1);
  std::mutex released_mu;
  std::condition_variable released_cv;
  std::uint64_t released = start_chunk;  // guarded by released_mu: the writer is done below
  bool released_stop = false;            // guarded by released_mu
  const image::BufferGate gate = [&](std::size_t index) {
    std::unique_lock lock(released_mu);
    released_cv.wait(lock, [&] { return released_stop || released + kBuffers > index; });
    return released + kBuffers > index;
  };
  // Every chunk is read back from the slot before the journal counts it,
  // and checked against the bytes it was written from, which were
  // authenticated before the write (kContentCheck); a chunk written before a
  // cut, whose buffer is gone, is hashed against the manifest instead. With
  // boot.read_back: cache the writer reads each chunk back from the page
  // cache at once and compares; a read-back thread behind it hashes the
  // chunks written before a cut. A checkpoint thread syncs the slot at each
  // checkpoint and records it in the journal once the read-back passed it
  // too: the journal says "chunk k is done" only once the slot's bytes below
  // k are on stable storage and read back right. Neither thread holds a
  // chunk buffer, and a sync never holds up the read-back. One checkpoint at
  // a time: while one runs, the writer does not queue another but goes on,
  // and starts the next with the first chunk after it finished
  // (checkpoint_bytes after the last one at least). So the writer never
  // waits for a sync, however slow, and the disk always has writes queued
  // and a flush under way (a virtual disk's host persists only when
  // flushed). Bounded: the read-back may lag kReadBackLag chunks; a slower
  // read-back slows the writer.
  struct Written {
    std::uint64_t index = 0;
  };
  // boot.read_back: medium reads every chunk back from the medium (O_DIRECT)
  // as soon as it is written, on kMediumThreads threads beside the writer,
  // instead of from the page cache: the read-back before the trial boot
  // (StepVerify) then has nothing left to read, and the install reads the
  // slot once, not twice. The writer neither compares nor waits for it; a
  // checkpoint is recorded once its sync returned and the read-back passed
  // it. (Reading after the sync instead made the last checkpoint's chunks,
  // up to a third of a 256 MiB slot, wait for the last sync and then be
  // read back alone: 0.07 s of a 0.3 s install on a loop slot.)
  const bool medium = options_.read_back == InstallerOptions::ReadBack::kMedium;
  // Chunks read back before a cut: from the medium only if the journal says
  // so (a job started with boot.read_back: cache, an older agent's record).
  const std::uint64_t first_unverified =
      medium && !record.verified_medium ? 0 : record.verified_chunk;
  BoundedQueue<Written> written(kReadBackLag);
  // With medium: the CRC-32C of each chunk this run wrote, taken by the
  // writer from the buffer it writes; its read-back checks that CRC instead
  // of a second SHA-256 pass (ReadBackChunk). Chunks written before a cut
  // are hashed against the manifest. Set before the writer counts the chunk
  // in on_slot, read once it is.
  std::vector<std::optional<std::uint32_t>> written_crc(medium ? m.chunks.size() : 0);
  BoundedQueue<std::uint64_t> checkpoints(2);  // chunk counts
  std::mutex verified_mu;
  std::condition_variable verified_cv;
  std::uint64_t verified = first_unverified;  // guarded by verified_mu
  std::uint64_t on_slot = record.next_chunk;  // guarded by verified_mu: written to the slot below
  // guarded by verified_mu: per medium thread, the first chunk of its share not read back yet
  std::array<std::uint64_t, kMediumThreads> medium_next{};
  for (std::size_t t = 0; t < kMediumThreads; ++t) medium_next.at(t) = first_unverified + t;
  bool stopped = false;  // guarded by verified_mu
  std::mutex record_mu;  // the checkpoint thread updates the record; Report reads it
  auto stop_all = [&] {
    {
      const std::lock_guard lock(released_mu);
      released_stop = true;
    }
    released_cv.notify_all();
    full_blocks.Close();
    written.Close();
    checkpoints.Close();
    {
      const std::lock_guard lock(verified_mu);
      stopped = true;
    }
    verified_cv.notify_all();
  };
  std::optional<Error> write_error;
  std::optional<Error> verify_error;  // guarded by verified_mu while the read-back runs
  std::optional<Error> checkpoint_error;
  std::vector<std::thread> verify_threads;
  if (!medium) {
    verify_threads.emplace_back([&] {
      std::vector<std::uint8_t> piece(kReadBackPiece);
      // From verified_chunk: chunks written (and synced) before a cut but
      // not read back then come first.
      std::uint64_t next = record.verified_chunk;
      while (auto chunk = written.Pop()) {
        for (; next <= chunk->index; ++next) {
          const bool compared = next >= start_chunk;  // by the writer
          if (auto st =
                  compared ? Ok() : ReadBackChunk(record, m, *slot, next, piece, false, &times);
              !st) {
            {
              const std::lock_guard lock(verified_mu);
              verify_error = std::move(st).error();
            }
            stop_all();
            return;
          }
          {
            const std::lock_guard lock(verified_mu);
            verified = next + 1;
          }
          verified_cv.notify_all();
        }
      }
    });
  } else {
    const auto total = static_cast<std::uint64_t>(m.chunks.size());
    for (std::size_t t = 0; t < kMediumThreads && first_unverified + t < total; ++t) {
      verify_threads.emplace_back([&, t, total] {
        AlignedBuffer piece(std::min<std::uint64_t>(kMediumPiece, m.chunk_size));
        for (std::uint64_t i = first_unverified + t; i < total; i += kMediumThreads) {
          {
            std::unique_lock lock(verified_mu);
            verified_cv.wait(lock, [&] { return stopped || on_slot > i; });
            if (stopped) return;
          }
          auto st = ReadBackChunk(record, m, *slot, i, piece.span(), true, &times, written_crc[i]);
          const bool ok = static_cast<bool>(st);
          {
            const std::lock_guard lock(verified_mu);
            if (!ok) {
              if (!verify_error) verify_error = std::move(st).error();
            } else {
              medium_next.at(t) = i + kMediumThreads;
              verified = std::min(total, *std::min_element(medium_next.begin(), medium_next.end()));
            }
          }
          if (!ok) {
            stop_all();
            return;
          }
          verified_cv.notify_all();
        }
        {
          const std::lock_guard lock(verified_mu);
          medium_next.at(t) = total;
          verified = std::min(total, *std::min_element(medium_next.begin(), medium_next.end()));
        }
        verified_cv.notify_all();
      });
    }
  }
  std::atomic<bool> checkpointing{false};  // a checkpoint is queued or running (the last may queue)
  std::thread checkpoint_thread([&] {
    while (auto upto = checkpoints.Pop()) {
      auto st = [&] {
        const StageTimer timer(&times, Stage::kFlush);
        return writer->Sync();
      }();
      if (st) {
        std::unique_lock lock(verified_mu);
        verified_cv.wait(lock, [&] { return stopped || verified >= *upto; });
        if (verified < *upto) return;  // the read-back failed
      }
      if (st) {
        nlohmann::json doc;
        {
          const std::lock_guard lock(record_mu);
          record.next_chunk = *upto;
          record.verified_chunk = *upto;
          record.verified_medium = medium;
          record.updated_at = NowUtc();
          doc = record.ToJson();
        }
        st = journal_.Save(doc);
      }
      if (!st) {
        checkpoint_error = std::move(st).error();
        stop_all();
        return;
      }
      checkpointing = false;
    }
  });
  std::thread writer_thread([&] {
    std::vector<std::uint8_t> piece(medium ? 0 : kReadBackPiece);
    std::uint64_t since_checkpoint = 0;
    auto last_checkpoint = std::chrono::steady_clock::now();
    while (auto block = full_blocks.Pop()) {
      const std::uint64_t at = block->index * m.chunk_size;
      if (medium) {
        const StageTimer timer(&times, Stage::kCrc);
        written_crc[block->index] = Crc32c(block->data);
      }
      if (auto st =
              [&] {
                const StageTimer timer(&times, Stage::kWrite);
                return writer->WriteAt(at, block->data);
              }();
          !st) {
        write_error = std::move(st).error().WithContext("writing slot " + record.target_slot);
        stop_all();
        return;
      }
      if (medium) {
        {
          const std::lock_guard lock(verified_mu);
          on_slot = block->index + 1;
        }
        verified_cv.notify_all();
      } else {
        if (auto st = CompareBack(record, *slot, block->index, at, block->data, piece, &times);
            !st) {
          write_error = std::move(st).error();
          stop_all();
          return;
        }
        if (!written.Push(Written{block->index})) return;  // failed
      }
      since_checkpoint += block->data.size();
      const bool last = block->index + 1 == m.chunks.size();
      if (last ||
          (!checkpointing && since_checkpoint >= options_.checkpoint_bytes &&
           std::chrono::steady_clock::now() - last_checkpoint >= options_.checkpoint_interval)) {
        checkpointing = true;
        if (!checkpoints.Push(block->index + 1)) return;  // the checkpoint failed
        since_checkpoint = 0;
        last_checkpoint = std::chrono::steady_clock::now();
      }
      {
        const std::lock_guard lock(record_mu);
        Report(record, block->index + 1, m.chunks.size());
      }
      {
        const std::lock_guard lock(released_mu);
        released = block->index + 1;
      }
      released_cv.notify_all();
    }
  });

  std::optional<Error> read_error;
  auto produce = [&](auto& reader) {
    for (;;) {
      if (Stopping()) {
        read_error = Error(Errc::kCancelled, "stopped");
        return;
      }
      auto chunk = reader.Next();
      if (!chunk) {
        read_error = std::move(chunk).error();
        return;
      }
      if (!*chunk) return;
      if (!full_blocks.Push(Block{(*chunk)->index, (*chunk)->data})) {
        return;
      }
    }
  };
  // The writer writes from the reader's buffers: it is done before the
  // reader goes away. The last checkpoint is taken before this step ends.
  const auto wall0 = ClockNs(CLOCK_MONOTONIC);
  if (stream != nullptr) {
    stream->SetBufferGate(gate);
    struct Adapter {
      image::ImageReader& r;
      auto Next() { return r.NextChunk(); }
    } adapter{*stream};
    produce(adapter);
  } else {
    chunk_reader->SetBufferGate(gate);
    produce(*chunk_reader);
  }
  full_blocks.Close();
  writer_thread.join();
  written.Close();
  checkpoints.Close();
  if (medium) {
    // The medium read-back serves the queued checkpoints; then it stops.
    checkpoint_thread.join();
    {
      const std::lock_guard lock(verified_mu);
      stopped = true;
    }
    verified_cv.notify_all();
    for (auto& t : verify_threads) t.join();
  } else {
    for (auto& t : verify_threads) t.join();
    checkpoint_thread.join();
  }
  spdlog::info("job {}: Writing {} chunks from {} in {:.3f} s; stages (wall/CPU): {}", record.id,
               record.next_chunk - start_chunk, start_chunk,
               static_cast<double>(ClockNs(CLOCK_MONOTONIC) - wall0) / 1e9, times.Format());
  if (write_error) return *write_error;
  if (verify_error) return *verify_error;
  if (checkpoint_error) return *checkpoint_error;
  if (read_error) return read_error->WithContext("reading " + RedactUrl(record.source));
  if (record.next_chunk != m.chunks.size()) {
    return Error(Errc::kImageTruncated, RedactUrl(record.source) + " ended after chunk " +
                                            std::to_string(record.next_chunk) + " of " +
                                            std::to_string(m.chunks.size()));
  }
  return Save(record, JobEvent::kWritten);
}

// The write step read back every chunk it checkpointed; this reads back what
// it did not (a journal written before read-back ran beside the write).
Status DeviceInstaller::StepVerify(JobRecord& record) {
  EnterStep(record);
  // What the write step did not read back yet (a resume; a job written
  // with boot.read_back: cache, or by an older agent, when it is now
  // medium): from the medium after the final sync, or from the cache. A cut
  // here repeats the pass.
  const bool medium = options_.read_back == InstallerOptions::ReadBack::kMedium;
  const std::uint64_t verified = medium && !record.verified_medium ? 0 : record.verified_chunk;
  if (verified == record.chunks_total) return Save(record, JobEvent::kVerified);
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  SAG_TRY(const auto header, LoadHeader(record));
  const auto& m = header.manifest;
  platform::SlotDevice* slot = platform_.slots.at(target);
  const std::uint64_t first = std::min<std::uint64_t>(verified, m.chunks.size());
  StageTimes times;
  const auto wall0 = ClockNs(CLOCK_MONOTONIC);
  // Two threads (even and odd chunks) so that reading back costs about half
  // a SHA-256 pass of wall time on a two-core appliance; this one reports.
  constexpr std::size_t kThreads = 2;
  std::atomic<bool> failed{false};
  auto check = [&](std::uint64_t from, bool report) -> Status {
    AlignedBuffer piece(
        std::min<std::uint64_t>(medium ? kMediumPiece : kReadBackPiece, m.chunk_size));
    for (std::uint64_t i = from; i < m.chunks.size(); i += kThreads) {
      if (Stopping()) return Error(Errc::kCancelled, "stopped");
      if (failed) return Ok();  // the other thread found one
      if (auto st = ReadBackChunk(record, m, *slot, i, piece.span(), medium, &times); !st) {
        failed = true;
        return st;
      }
      if (report && (i % 16 == 14 || i + 2 >= m.chunks.size())) {
        Report(record, std::min<std::uint64_t>(i + 2, m.chunks.size()), m.chunks.size());
      }
    }
    return Ok();
  };
  Status other;
  std::optional<std::thread> helper;
  if (m.chunks.size() > first + 1) {
    try {
      helper.emplace([&] { other = check(first + 1, false); });
    } catch (const std::system_error& e) {  // no thread: this one does all
      spdlog::debug("job {}: no second read-back thread ({}): one thread reads all", record.id,
                    e.what());
    }
  }
  Status mine = check(first, true);
  if (helper) {
    helper->join();
  } else if (mine) {
    other = check(first + 1, false);
  }
  spdlog::info("job {}: Verifying chunks {}-{} from the {} in {:.3f} s; stages (wall/CPU): {}",
               record.id, first, m.chunks.size(), medium ? "medium" : "cache",
               static_cast<double>(ClockNs(CLOCK_MONOTONIC) - wall0) / 1e9, times.Format());
  SAG_TRY_STATUS(mine);
  SAG_TRY_STATUS(other);
  record.verified_chunk = m.chunks.size();
  record.verified_medium = medium;
  return Save(record, JobEvent::kVerified);
}

// ---------------------------------------------------------------- boot

Status DeviceInstaller::StepActivate(JobRecord& record) {
  EnterStep(record);
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  // The point of no return: decided under the cancel point's lock, so a
  // cancel either came first (the trial is never set) or is refused.
  if (job_cancel_ != nullptr && !job_cancel_->TryCross()) return CancelledError(record);
  SAG_TRY_STATUS(platform_.boot->SetTrial(target, options_.trial_attempts));
  SAG_TRY(record.boot_id, platform_.system->BootId());
  SAG_TRY_STATUS(Save(record, JobEvent::kTrialSet));
  if (record.reboot) {
    spdlog::info("job {}: trial boot of slot {} set; rebooting", record.id, record.target_slot);
    return platform_.rebooter->Reboot();
  }
  spdlog::info("job {}: trial boot of slot {} set; it runs at the next reboot", record.id,
               record.target_slot);
  return Ok();
}

Status DeviceInstaller::StepReboot(JobRecord& record) {
  SAG_TRY(const auto boot_id, platform_.system->BootId());
  if (boot_id == record.boot_id) {
    // Same boot: the agent restarted before the reboot happened.
    if (record.reboot) return platform_.rebooter->Reboot();
    return Ok();
  }
  return StepAfterBoot(record);
}

Status DeviceInstaller::StepAfterBoot(JobRecord& record) {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  if (booted == target) {
    spdlog::info("job {}: booted the new slot {}; running health checks", record.id,
                 record.target_slot);
    SAG_TRY_STATUS(Save(record, JobEvent::kBootedNew));
    return StepHealth(record);
  }
  record.error =
      Error(Errc::kRolledBack,
            "the trial boot of slot " + record.target_slot + " (version " + record.version +
                ") did not come up within " + std::to_string(options_.trial_attempts) +
                " attempts; the bootloader fell back to slot " +
                std::string(platform::SlotName(booted)) + " (" + record.from_version + ")");
  SAG_TRY_STATUS(platform_.boot->MarkGood(booted, options_.trial_attempts));
  SAG_TRY_STATUS(Save(record, JobEvent::kBootedOld));
  spdlog::warn("job {}: rolled back: {}", record.id, record.error->message());
  return ArchiveFinished(record);
}

Status DeviceInstaller::StepHealth(JobRecord& record) {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  if (std::string(platform::SlotName(booted)) != record.target_slot) {
    // Power was lost during the health check and the bootloader gave up.
    return StepAfterBoot(record);
  }
  EnterStep(record);
  auto health = RunHealthChecks(record);
  if (!health && health.error().code() == Errc::kCancelled) {
    // The agent stops (SIGTERM) while a check waits: no verdict on the new
    // OS. The job stays HealthChecking and the checks run again at the next
    // start (Run() returns the record as it is).
    return std::move(health).error();
  }
  if (health) {
    SAG_TRY_STATUS(Save(record, JobEvent::kHealthy));
    return StepCommit(record);
  }
  record.error = Error(Errc::kHealthCheckFailed,
                       health.error().message() + "; returning to slot " + record.from_slot);
  SAG_TRY(record.boot_id, platform_.system->BootId());
  SAG_TRY_STATUS(Save(record, JobEvent::kUnhealthy));
  spdlog::error("job {}: health check failed on slot {}: {}", record.id, record.target_slot,
                health.error().message());
  return StepRollingBack(record);
}

Status DeviceInstaller::RunHealthChecks(const JobRecord& record) {
  for (const auto& check : options_.health_checks) {
    CommandOptions opt;
    opt.timeout = check.timeout;
    auto st = CheckCommand(check.command, opt);
    if (!st) return std::move(st).error().WithContext("health check '" + check.name + "'");
    // Each line of a job names it and its stage (docs/status.md, Logs).
    spdlog::info("job {}: {}: health check '{}' passed", record.id, JobStateName(record.state),
                 check.name);
  }
  if (options_.cloud_check) {
    SAG_TRY_STATUS(options_.cloud_check());
  }
  return Ok();
}

Status DeviceInstaller::StepCommit(JobRecord& record) {
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  SAG_TRY_STATUS(platform_.boot->MarkGood(target, options_.trial_attempts));
  SAG_TRY_STATUS(RecordSlot(target, record));
  SAG_TRY_STATUS(Save(record, JobEvent::kMarkedGood));
  spdlog::info("job {}: committed: slot {} runs {}", record.id, record.target_slot, record.version);
  return ArchiveFinished(record);
}

Status DeviceInstaller::StepRollingBack(JobRecord& record) {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  SAG_TRY(const auto boot_id, platform_.system->BootId());
  SAG_TRY(const Slot from, SlotOf(record.from_slot));
  if (boot_id != record.boot_id && booted == from) {
    SAG_TRY_STATUS(platform_.boot->MarkGood(from, options_.trial_attempts));
    SAG_TRY_STATUS(Save(record, JobEvent::kBootedOld));
    spdlog::warn("job {}: rolled back to slot {} ({})", record.id, record.from_slot,
                 record.from_version);
    return ArchiveFinished(record);
  }
  if (boot_id != record.boot_id) {
    // Still on the bad slot after a reboot: mark it bad again and go back.
    record.boot_id = boot_id;
    SAG_TRY_STATUS(SaveProgress(record));
  }
  SAG_TRY(const Slot target, SlotOf(record.target_slot));
  SAG_TRY_STATUS(platform_.boot->MarkBad(target));
  return platform_.rebooter->Reboot();
}

// ---------------------------------------------------------------- manual

Status DeviceInstaller::MarkGood() {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  SAG_TRY(auto doc, journal_.Load());
  if (doc) {
    SAG_TRY(auto record, RecordFrom(journal_, *doc));
    if (record.state == JobState::kHealthChecking &&
        record.target_slot == platform::SlotName(booted)) {
      SAG_TRY_STATUS(Save(record, JobEvent::kHealthy));
      return StepCommit(record);
    }
  }
  return platform_.boot->MarkGood(booted, options_.trial_attempts);
}

Status DeviceInstaller::Rollback() {
  SAG_TRY(const Slot booted, platform_.boot->BootedSlot());
  SAG_TRY(auto doc, journal_.Load());
  if (doc) {
    SAG_TRY(auto record, RecordFrom(journal_, *doc));
    if (record.state == JobState::kHealthChecking) {
      record.error = Error(Errc::kRolledBack, "rolled back by the operator");
      SAG_TRY(record.boot_id, platform_.system->BootId());
      SAG_TRY_STATUS(Save(record, JobEvent::kUnhealthy));
      return StepRollingBack(record);
    }
    return Error(Errc::kJobConflict, "job " + record.id + " is " +
                                         std::string(JobStateName(record.state)) +
                                         "; a manual rollback is possible only after it finished");
  }
  // Only to a slot that holds a committed image: an empty or half-written
  // slot would just fall back again.
  const Slot other = platform::OtherSlot(booted);
  const std::string other_name(platform::SlotName(other));
  auto slots = ReadFile(options_.state_dir / "slots.json", 1U << 20U);
  const auto recorded = slots ? nlohmann::json::parse(*slots, nullptr, false) : nlohmann::json();
  if (!recorded.is_object() || !recorded.contains(other_name)) {
    return Error(Errc::kInvalidArgument,
                 "slot " + other_name + " holds no committed image; nothing to roll back to");
  }
  SAG_TRY_STATUS(platform_.boot->MarkGood(other, options_.trial_attempts));
  return platform_.rebooter->Reboot();
}

}  // namespace sag::firmware
