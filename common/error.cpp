#include "common/error.h"

#include <cerrno>
#include <cstring>

namespace sag {

std::string_view ErrcName(Errc code) {
  switch (code) {
#define SAG_ERRC_NAME(name) \
  case Errc::k##name:       \
    return #name;
    SAG_ERRC_NAME(Ok)
    SAG_ERRC_NAME(Internal)
    SAG_ERRC_NAME(InvalidArgument)
    SAG_ERRC_NAME(ConfigMissing)
    SAG_ERRC_NAME(ConfigSyntax)
    SAG_ERRC_NAME(ConfigUnknownKey)
    SAG_ERRC_NAME(ConfigType)
    SAG_ERRC_NAME(ConfigRange)
    SAG_ERRC_NAME(ConfigMissingKey)
    SAG_ERRC_NAME(Io)
    SAG_ERRC_NAME(NoSpace)
    SAG_ERRC_NAME(NotFound)
    SAG_ERRC_NAME(Permission)
    SAG_ERRC_NAME(Timeout)
    SAG_ERRC_NAME(Cancelled)
    SAG_ERRC_NAME(CommandFailed)
    SAG_ERRC_NAME(ImageTruncated)
    SAG_ERRC_NAME(ImageContainer)
    SAG_ERRC_NAME(ManifestMalformed)
    SAG_ERRC_NAME(ManifestVersion)
    SAG_ERRC_NAME(ManifestLimits)
    SAG_ERRC_NAME(SignatureInvalid)
    SAG_ERRC_NAME(SignerUntrusted)
    SAG_ERRC_NAME(SignerExpired)
    SAG_ERRC_NAME(SignerNotYetValid)
    SAG_ERRC_NAME(SignerUsage)
    SAG_ERRC_NAME(ChunkHashMismatch)
    SAG_ERRC_NAME(PayloadHashMismatch)
    SAG_ERRC_NAME(Decompress)
    SAG_ERRC_NAME(ImageTooLarge)
    SAG_ERRC_NAME(KeyInvalid)
    SAG_ERRC_NAME(ImageNonCanonical)
    SAG_ERRC_NAME(BootEnvCorrupt)
    SAG_ERRC_NAME(BootEnvInvalid)
    SAG_ERRC_NAME(BootEnvWrite)
    SAG_ERRC_NAME(UnknownSlot)
    SAG_ERRC_NAME(SlotSize)
    SAG_ERRC_NAME(SlotReadOnly)
    SAG_ERRC_NAME(SlotIo)
    SAG_ERRC_NAME(RebootFailed)
    SAG_ERRC_NAME(SystemInfo)
    SAG_ERRC_NAME(VersionTooOld)
    SAG_ERRC_NAME(IncompatibleModel)
    SAG_ERRC_NAME(WrongType)
    SAG_ERRC_NAME(SlotTooSmall)
    SAG_ERRC_NAME(ReadBackMismatch)
    SAG_ERRC_NAME(HealthCheckFailed)
    SAG_ERRC_NAME(RolledBack)
    SAG_ERRC_NAME(WrongSlotBooted)
    SAG_ERRC_NAME(JobConflict)
    SAG_ERRC_NAME(JobUnknown)
    SAG_ERRC_NAME(JournalCorrupt)
    SAG_ERRC_NAME(VersionUnparsable)
    SAG_ERRC_NAME(JournalNewerFormat)
    SAG_ERRC_NAME(SpecMismatch)
    SAG_ERRC_NAME(JobCrashLoop)
    SAG_ERRC_NAME(BadRequest)
    SAG_ERRC_NAME(OutboxCorrupt)
    SAG_ERRC_NAME(CancelTooLate)
    SAG_ERRC_NAME(NetConnect)
    SAG_ERRC_NAME(NetTls)
    SAG_ERRC_NAME(NetHttpStatus)
    SAG_ERRC_NAME(NetStalled)
    SAG_ERRC_NAME(NetTooManyRedirects)
    SAG_ERRC_NAME(NetProtocol)
    SAG_ERRC_NAME(NetRangeUnsupported)
    SAG_ERRC_NAME(NetDeadline)
    SAG_ERRC_NAME(NetTooSlow)
    SAG_ERRC_NAME(ArchiveUnsafePath)
    SAG_ERRC_NAME(ArchiveUnsafeLink)
    SAG_ERRC_NAME(ArchiveSpecialFile)
    SAG_ERRC_NAME(ArchiveSetId)
    SAG_ERRC_NAME(ArchiveTooManyEntries)
    SAG_ERRC_NAME(ArchiveTooLarge)
    SAG_ERRC_NAME(ArchiveRatio)
    SAG_ERRC_NAME(ArchiveMalformed)
    SAG_ERRC_NAME(DpiValidateFailed)
    SAG_ERRC_NAME(DpiReloadFailed)
    SAG_ERRC_NAME(DpiConfirmMismatch)
    SAG_ERRC_NAME(DpiStore)
    SAG_ERRC_NAME(DpiInterrupted)
    SAG_ERRC_NAME(Protocol)
    SAG_ERRC_NAME(ProtocolVersion)
    SAG_ERRC_NAME(ProtocolUnknownType)
    SAG_ERRC_NAME(ProtocolTooLarge)
    SAG_ERRC_NAME(ChannelRefused)
    SAG_ERRC_NAME(ChannelClosed)
    SAG_ERRC_NAME(ChannelTimeout)
    SAG_ERRC_NAME(StoreCorrupt)
    SAG_ERRC_NAME(UnknownDevice)
    SAG_ERRC_NAME(JobExists)
    SAG_ERRC_NAME(StoreNewerSchema)
#undef SAG_ERRC_NAME
  }
  return "Unknown";
}

Error Error::WithContext(std::string_view context) const& {
  Error copy = *this;
  return std::move(copy).WithContext(context);
}

Error Error::WithContext(std::string_view context) && {
  std::string msg;
  msg.reserve(context.size() + 2 + message_.size());
  msg.append(context).append(": ").append(message_);
  message_ = std::move(msg);
  return std::move(*this);
}

std::string Error::ToString() const {
  std::string out = "E" + std::to_string(number()) + " ";
  out.append(ErrcName(code_)).append(": ").append(message_);
  return out;
}

Error MakeErrno(Errc code, std::string_view what, int err) {
  if (err == ENOSPC || err == EDQUOT) code = Errc::kNoSpace;
  std::string msg(what);
  msg.append(": ").append(std::strerror(err));  // NOLINT(concurrency-mt-unsafe)
  return {code, std::move(msg)};
}

Error MakeErrno(Errc code, std::string_view what) { return MakeErrno(code, what, errno); }

}  // namespace sag
