// The default Store backend: one embedded SQLite database file (Debian's
// libsqlite3).
//
// - WAL journal; synchronous=FULL for kDurable writes (the commit returns
//   after the WAL is fsync'd: an acknowledged report survives a power cut),
//   synchronous=NORMAL for kRelaxed ones (written to the WAL, fsync'd by the
//   next durable commit or checkpoint: a crash of the process loses nothing,
//   a power cut may lose the last relaxed writes, never tear a transaction).
// - One transaction per event (a hello updates one device row and the jobs it
//   names; a report inserts one row and updates its device and job), never a
//   rewrite of the whole state.
// - Versioned schema (PRAGMA user_version): migrations run in order at open,
//   each in its own transaction; a database of a newer schema than this
//   binary knows is refused (kStoreNewerSchema) and left untouched. A file
//   that is not an SQLite database, or another program's, is refused too.
// - A busy timeout, so that a reader (`sag-cloud store dump`) does not fail a
//   write.
//
// Thread-safe (one connection behind a mutex); the gateway and the API use it
// from one io_context thread anyway.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>

#include "cloud/store.h"

namespace sag::cloud {

// The schema version this binary writes.
inline constexpr int kSqliteSchemaVersion = 3;

struct SqliteOptions {
  // Reads only (`sag-cloud store dump`): no migration, no write; the schema
  // must be the current one.
  bool read_only = false;
  // How long a statement waits for another connection's lock.
  std::chrono::milliseconds busy_timeout{5000};
  // One process only: SQLite's exclusive locking mode, which keeps the WAL
  // index in the process's memory instead of a shared-memory file (`-shm`).
  // For file systems without shared mmap (FUSE with direct I/O, such as the
  // power-cut model tools/powerloss); `store dump` cannot read it meanwhile.
  bool exclusive = false;
  // Tests only: migrate up to this version instead of kSqliteSchemaVersion
  // (to make a database as an older sag-cloud left it).
  int migrate_to = kSqliteSchemaVersion;
};

// Opens (creating it if missing) and migrates the store at `path`. kIo,
// kStoreCorrupt (not an SQLite database, another program's, a JSON store of
// an older sag-cloud, damaged), kStoreNewerSchema; each says what to do.
Expected<std::unique_ptr<Store>> OpenSqliteStore(const std::filesystem::path& path,
                                                 const SqliteOptions& options = {});

}  // namespace sag::cloud
