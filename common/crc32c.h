// CRC-32C (Castagnoli), as iSCSI, ext4 and btrfs use it to catch a medium
// that returns other bytes than were written. Not a cryptographic check: the
// installer uses it for the read-back of chunks whose SHA-256 matched the
// signed manifest before they were written (docs/device-upgrade.md).
#pragma once

#include <cstdint>
#include <span>

namespace sag {

// The CRC-32C of `data`, continuing from `crc` (the CRC of what came
// before; 0 to start): Crc32c(b, Crc32c(a)) == Crc32c(a then b). SSE 4.2's
// crc32 instruction where the CPU has it, a table otherwise.
std::uint32_t Crc32c(std::span<const std::uint8_t> data, std::uint32_t crc = 0);

namespace detail {
// The table version alone (tests compare the two).
std::uint32_t Crc32cPortable(std::span<const std::uint8_t> data, std::uint32_t crc);
}  // namespace detail

}  // namespace sag
