// sag-powerloss: a FUSE file system over a backing directory that models a
// disk with a volatile write cache, so that a power cut loses what a real one
// loses. The model and its limits: docs/power-loss.md.
//
// Every operation is applied to the backing directory at once (reads see it),
// and an undo log remembers what is not durable yet:
//   - file data: the durable size of each file written since its last
//     fsync/fdatasync, and the old content of every 4 KiB block it overwrote;
//   - directory entries: creates, links, unlinks, rmdirs and renames in order;
//     an unlinked or overwritten entry is parked in a trash directory.
// fsync of a file makes its data durable; fsync of a directory makes the
// entry operations up to the last one that touched that directory durable.
// A cut undoes the rest (entries newest first, then the data), optionally
// letting a prefix of 512-byte sectors of the last write survive (torn).
#define FUSE_USE_VERSION 35

#include <dirent.h>
#include <fcntl.h>
#include <fuse.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr const char* kUsage = R"(usage: sag-powerloss COMMAND ...

A file system with a volatile write cache: what was not made durable by
fsync/fdatasync (file data) or by fsync of the directory (creates, renames,
unlinks) is lost at a cut. Model and limits: docs/power-loss.md.

commands:
  mount BACKING MOUNTPOINT [--cache direct|kernel|writeback] [--seed N]
      serve BACKING at MOUNTPOINT (may be the same directory) in the
      foreground until unmounted; an unmount is a clean shutdown (nothing
      is lost). --cache: direct (default) bypasses the kernel page cache so
      that a cut is exact; kernel keeps written data in the page cache (a
      lying medium then looks fine through it); writeback lets the kernel
      write back later (write errors then arrive asynchronously)
  cut MOUNTPOINT [--torn]
      power cut: discard the volatile state; --torn lets a random prefix of
      whole 512-byte sectors of the last unsynced write reach the medium.
      Prints the figures of the cut
  sync MOUNTPOINT      make everything durable (a clean shutdown, a bootloader)
  stats MOUNTPOINT     print the totals
  fault MOUNTPOINT fail|lie PATH OFFSET LENGTH [ERRNO]
      writes to PATH (relative to the mount) that overlap the byte range:
      fail returns ERRNO (default EIO); lie reports success and keeps nothing
  fault MOUNTPOINT clear
  umount MOUNTPOINT

The figures are key=value: cuts, bytes_lost (unsynced bytes written),
entries_lost (directory operations undone), torn (torn writes), syncs.
exit status: 0 success, 1 failure, 2 bad usage.
)";

constexpr const char* kCtl = ".sag-powerloss";
constexpr const char* kTrash = ".sag-powerloss-trash";
constexpr std::uint64_t kBlock = 4096;
constexpr std::uint64_t kSector = 512;
constexpr std::uint64_t kCtlFh = ~std::uint64_t{0};

enum class CacheMode { kDirect, kKernel, kWriteback };

struct FileUndo {
  int fd = -1;
  std::uint64_t durable_size = 0;
  std::map<std::uint64_t, std::string> blocks;  // block index -> durable content
  std::uint64_t unsynced = 0;                   // bytes written since durable
};

enum class OpKind { kCreate, kUnlink, kRename };

struct NsOp {
  OpKind kind = OpKind::kCreate;
  std::string from;   // create/unlink: the name; rename: the old name
  std::string to;     // rename: the new name
  std::string trash;  // unlink: the parked entry; rename: the overwritten one
  bool is_dir = false;
};

struct Fault {
  ino_t ino = 0;
  std::uint64_t off = 0;
  std::uint64_t len = 0;
  int err = 0;  // 0: lie
};

struct LastWrite {
  ino_t ino = 0;
  std::uint64_t off = 0;
  std::string data;
};

struct State {
  int root = -1;
  CacheMode cache = CacheMode::kDirect;
  std::map<ino_t, FileUndo> files;
  std::vector<NsOp> ops;
  std::vector<Fault> faults;
  std::optional<LastWrite> last;
  std::uint64_t trash_seq = 0;
  std::mt19937_64 rng{1};
  std::string reply;  // what a read of the control file returns
  // totals
  std::uint64_t cuts = 0, bytes_lost = 0, entries_lost = 0, torn = 0, syncs = 0;
};

State g;

std::string Rel(const char* path) {
  if (path == nullptr) return {};
  std::string p(path);
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  return p.empty() ? std::string(".") : p;
}

std::string Parent(const std::string& rel) {
  const auto slash = rel.rfind('/');
  return slash == std::string::npos ? std::string(".") : rel.substr(0, slash);
}

bool IsCtl(const char* path) { return path != nullptr && std::strcmp(path + 1, kCtl) == 0; }

int Neg() { return -errno; }

std::string NewTrash() { return std::string(kTrash) + "/" + std::to_string(++g.trash_seq); }

bool Exists(const std::string& rel, struct stat* st = nullptr) {
  struct stat tmp {};
  return ::fstatat(g.root, rel.c_str(), st != nullptr ? st : &tmp, AT_SYMLINK_NOFOLLOW) == 0;
}

// --- the undo log -----------------------------------------------------------

// Only with --cache direct: through the kernel's page cache a cut cannot be
// exact, so the other modes serve fault injection only and keep no log.
FileUndo* Track(int fd) {
  if (g.cache != CacheMode::kDirect) return nullptr;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return nullptr;
  auto it = g.files.find(st.st_ino);
  if (it != g.files.end()) return &it->second;
  FileUndo u;
  u.fd = ::open(("/proc/self/fd/" + std::to_string(fd)).c_str(), O_RDWR | O_CLOEXEC);
  if (u.fd < 0) u.fd = ::dup(fd);
  u.durable_size = static_cast<std::uint64_t>(st.st_size);
  return &g.files.emplace(st.st_ino, std::move(u)).first->second;
}

// Saves the durable content of the blocks in [off, off + len) before they change.
void SaveRange(FileUndo& u, std::uint64_t off, std::uint64_t len) {
  if (len == 0) return;
  for (std::uint64_t b = off / kBlock; b <= (off + len - 1) / kBlock; ++b) {
    const std::uint64_t start = b * kBlock;
    if (start >= u.durable_size) break;
    if (u.blocks.count(b) != 0) continue;
    std::string old(std::min(kBlock, u.durable_size - start), '\0');
    const ssize_t n = ::pread(u.fd, old.data(), old.size(), static_cast<off_t>(start));
    old.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
    u.blocks.emplace(b, std::move(old));
  }
}

void CommitFile(ino_t ino) {
  auto it = g.files.find(ino);
  if (it == g.files.end()) return;
  ::close(it->second.fd);
  g.files.erase(it);
}

void RemoveTrash(const NsOp& op) {
  if (op.trash.empty()) return;
  struct stat st {};
  if (!Exists(op.trash, &st)) return;
  ::unlinkat(g.root, op.trash.c_str(), S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0);
}

void CommitOps(std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) RemoveTrash(g.ops[i]);
  g.ops.erase(g.ops.begin(), g.ops.begin() + static_cast<std::ptrdiff_t>(count));
}

void CommitDir(const std::string& dir) {
  std::size_t upto = 0;
  for (std::size_t i = 0; i < g.ops.size(); ++i) {
    const NsOp& op = g.ops[i];
    if (Parent(op.from) == dir || (op.kind == OpKind::kRename && Parent(op.to) == dir))
      upto = i + 1;
  }
  CommitOps(upto);
}

void SyncAll() {
  ++g.syncs;
  CommitOps(g.ops.size());
  for (auto& [ino, u] : g.files) ::close(u.fd);
  g.files.clear();
  g.last.reset();
}

std::string Figures(std::uint64_t bytes, std::uint64_t entries, std::uint64_t torn) {
  std::ostringstream o;
  o << "cuts=" << g.cuts << " bytes_lost=" << bytes << " entries_lost=" << entries
    << " torn=" << torn << " syncs=" << g.syncs << "\n";
  return o.str();
}

std::string Cut(bool torn) {
  ++g.cuts;
  const std::uint64_t entries = g.ops.size();
  for (auto it = g.ops.rbegin(); it != g.ops.rend(); ++it) {
    const NsOp& op = *it;
    switch (op.kind) {
      case OpKind::kCreate:
        ::unlinkat(g.root, op.from.c_str(), op.is_dir ? AT_REMOVEDIR : 0);
        break;
      case OpKind::kUnlink:
        ::renameat(g.root, op.trash.c_str(), g.root, op.from.c_str());
        break;
      case OpKind::kRename:
        ::renameat(g.root, op.to.c_str(), g.root, op.from.c_str());
        if (!op.trash.empty()) ::renameat(g.root, op.trash.c_str(), g.root, op.to.c_str());
        break;
    }
  }
  g.ops.clear();
  std::uint64_t bytes = 0;
  std::uint64_t torn_now = 0;
  for (auto& [ino, u] : g.files) {
    bytes += u.unsynced;
    (void)::ftruncate(u.fd, static_cast<off_t>(u.durable_size));
    for (const auto& [b, old] : u.blocks) {
      (void)::pwrite(u.fd, old.data(), old.size(), static_cast<off_t>(b * kBlock));
    }
    if (torn && g.last && g.last->ino == ino) {
      // The write in flight: a random number of its whole sectors made it.
      const std::uint64_t sectors = (g.last->data.size() + kSector - 1) / kSector;
      if (sectors >= 2 && g.last->off + g.last->data.size() <= u.durable_size) {
        const std::uint64_t keep =
            std::uniform_int_distribution<std::uint64_t>(1, sectors - 1)(g.rng) * kSector;
        (void)::pwrite(u.fd, g.last->data.data(), keep, static_cast<off_t>(g.last->off));
        ++torn_now;
      }
    }
    ::close(u.fd);
  }
  g.files.clear();
  g.last.reset();
  g.bytes_lost += bytes;
  g.entries_lost += entries;
  g.torn += torn_now;
  return Figures(bytes, entries, torn_now);
}

std::string Control(const std::string& line) {
  std::istringstream in(line);
  std::string cmd;
  in >> cmd;
  if (cmd == "cut") {
    if (g.cache != CacheMode::kDirect) return {};  // not exact through a page cache
    std::string opt;
    in >> opt;
    return Cut(opt == "torn");
  }
  if (cmd == "sync") {
    SyncAll();
    return Figures(g.bytes_lost, g.entries_lost, g.torn);
  }
  if (cmd == "stats") return Figures(g.bytes_lost, g.entries_lost, g.torn);
  if (cmd == "clear") {
    g.faults.clear();
    return "faults cleared\n";
  }
  if (cmd == "fail" || cmd == "lie") {
    std::string path;
    Fault f;
    int err = EIO;
    in >> path >> f.off >> f.len;
    if (!in) return {};
    if (cmd == "fail" && !(in >> err)) err = EIO;
    struct stat st {};
    if (!Exists(Rel(path.c_str()), &st)) return {};
    f.ino = st.st_ino;
    f.err = cmd == "fail" ? err : 0;
    g.faults.push_back(f);
    return "fault set\n";
  }
  return {};
}

// --- file system operations -------------------------------------------------

void* Init(struct fuse_conn_info* conn, struct fuse_config* cfg) {
  cfg->use_ino = 1;
  cfg->nullpath_ok = 1;
  cfg->hard_remove = 1;
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->direct_io = g.cache == CacheMode::kDirect ? 1 : 0;
  cfg->kernel_cache = g.cache != CacheMode::kDirect ? 1 : 0;
  // The page cache is kept when the file's mtime changes under it (the
  // daemon's own writes change it): in kernel mode it shows what was written.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  if (g.cache == CacheMode::kWriteback) {
    conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  } else {
    conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  }
  return nullptr;
}

void Destroy(void* /*unused*/) { SyncAll(); }

int GetAttr(const char* path, struct stat* st, struct fuse_file_info* fi) {
  if (IsCtl(path) || (fi != nullptr && fi->fh == kCtlFh)) {
    *st = {};
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_size = static_cast<off_t>(g.reply.size());
    return 0;
  }
  if (fi != nullptr) return ::fstat(static_cast<int>(fi->fh), st) == 0 ? 0 : Neg();
  return ::fstatat(g.root, Rel(path).c_str(), st, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Neg();
}

int ReadLink(const char* path, char* buf, size_t size) {
  const ssize_t n = ::readlinkat(g.root, Rel(path).c_str(), buf, size - 1);
  if (n < 0) return Neg();
  buf[n] = '\0';
  return 0;
}

void Logged(OpKind kind, const std::string& from, bool is_dir) {
  NsOp op;
  op.kind = kind;
  op.from = from;
  op.is_dir = is_dir;
  g.ops.push_back(std::move(op));
}

int MkNod(const char* path, mode_t mode, dev_t rdev) {
  if (::mknodat(g.root, Rel(path).c_str(), mode, rdev) != 0) return Neg();
  Logged(OpKind::kCreate, Rel(path), false);
  return 0;
}

int MkDir(const char* path, mode_t mode) {
  if (::mkdirat(g.root, Rel(path).c_str(), mode) != 0) return Neg();
  Logged(OpKind::kCreate, Rel(path), true);
  return 0;
}

int Unlink(const char* path) {
  const std::string rel = Rel(path);
  struct stat st {};
  if (!Exists(rel, &st)) return Neg();
  if (S_ISDIR(st.st_mode)) return -EISDIR;
  NsOp op;
  op.kind = OpKind::kUnlink;
  op.from = rel;
  op.trash = NewTrash();
  if (::renameat(g.root, rel.c_str(), g.root, op.trash.c_str()) != 0) return Neg();
  g.ops.push_back(std::move(op));
  return 0;
}

bool DirEmpty(const std::string& rel) {
  const int fd = ::openat(g.root, rel.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return false;
  }
  bool empty = true;
  while (const dirent* e = ::readdir(d)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
      empty = false;
      break;
    }
  }
  ::closedir(d);
  return empty;
}

int RmDir(const char* path) {
  const std::string rel = Rel(path);
  struct stat st {};
  if (!Exists(rel, &st)) return Neg();
  if (!S_ISDIR(st.st_mode)) return -ENOTDIR;
  if (!DirEmpty(rel)) return -ENOTEMPTY;
  NsOp op;
  op.kind = OpKind::kUnlink;
  op.from = rel;
  op.trash = NewTrash();
  op.is_dir = true;
  if (::renameat(g.root, rel.c_str(), g.root, op.trash.c_str()) != 0) return Neg();
  g.ops.push_back(std::move(op));
  return 0;
}

int SymLink(const char* target, const char* path) {
  if (::symlinkat(target, g.root, Rel(path).c_str()) != 0) return Neg();
  Logged(OpKind::kCreate, Rel(path), false);
  return 0;
}

int Rename(const char* from, const char* to, unsigned int flags) {
  if ((flags & RENAME_EXCHANGE) != 0) return -EINVAL;  // not modelled
  const std::string f = Rel(from);
  const std::string t = Rel(to);
  struct stat fs {};
  struct stat ts {};
  if (!Exists(f, &fs)) return Neg();
  NsOp op;
  op.kind = OpKind::kRename;
  op.from = f;
  op.to = t;
  op.is_dir = S_ISDIR(fs.st_mode);
  if (Exists(t, &ts)) {
    if ((flags & RENAME_NOREPLACE) != 0) return -EEXIST;
    if (ts.st_ino == fs.st_ino) return 0;
    if (S_ISDIR(ts.st_mode) && !S_ISDIR(fs.st_mode)) return -EISDIR;
    if (!S_ISDIR(ts.st_mode) && S_ISDIR(fs.st_mode)) return -ENOTDIR;
    if (S_ISDIR(ts.st_mode) && !DirEmpty(t)) return -ENOTEMPTY;
    op.trash = NewTrash();
    if (::renameat(g.root, t.c_str(), g.root, op.trash.c_str()) != 0) return Neg();
  }
  if (::renameat(g.root, f.c_str(), g.root, t.c_str()) != 0) {
    const int err = errno;
    if (!op.trash.empty()) ::renameat(g.root, op.trash.c_str(), g.root, t.c_str());
    return -err;
  }
  g.ops.push_back(std::move(op));
  return 0;
}

int Link(const char* from, const char* to) {
  if (::linkat(g.root, Rel(from).c_str(), g.root, Rel(to).c_str(), 0) != 0) return Neg();
  Logged(OpKind::kCreate, Rel(to), false);
  return 0;
}

int ChMod(const char* path, mode_t mode, struct fuse_file_info* fi) {
  if (fi != nullptr) return ::fchmod(static_cast<int>(fi->fh), mode) == 0 ? 0 : Neg();
  return ::fchmodat(g.root, Rel(path).c_str(), mode, 0) == 0 ? 0 : Neg();
}

int ChOwn(const char* path, uid_t uid, gid_t gid, struct fuse_file_info* fi) {
  if (fi != nullptr) return ::fchown(static_cast<int>(fi->fh), uid, gid) == 0 ? 0 : Neg();
  return ::fchownat(g.root, Rel(path).c_str(), uid, gid, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Neg();
}

int TruncateFd(int fd, off_t size) {
  if (FileUndo* u = Track(fd)) {
    struct stat st {};
    if (::fstat(fd, &st) == 0 && size < st.st_size) {
      SaveRange(*u, static_cast<std::uint64_t>(size),
                static_cast<std::uint64_t>(st.st_size - size));
    }
  }
  return ::ftruncate(fd, size) == 0 ? 0 : Neg();
}

int Truncate(const char* path, off_t size, struct fuse_file_info* fi) {
  if (IsCtl(path)) return 0;
  if (fi != nullptr) return TruncateFd(static_cast<int>(fi->fh), size);
  const int fd = ::openat(g.root, Rel(path).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Neg();
  const int rc = TruncateFd(fd, size);
  ::close(fd);
  return rc;
}

int Utimens(const char* path, const struct timespec tv[2], struct fuse_file_info* fi) {
  if (IsCtl(path)) return 0;
  if (fi != nullptr) return ::futimens(static_cast<int>(fi->fh), tv) == 0 ? 0 : Neg();
  return ::utimensat(g.root, Rel(path).c_str(), tv, AT_SYMLINK_NOFOLLOW) == 0 ? 0 : Neg();
}

void SetOpenFlags(struct fuse_file_info* fi) {
  fi->direct_io = g.cache == CacheMode::kDirect ? 1 : 0;
  fi->keep_cache = g.cache != CacheMode::kDirect ? 1 : 0;
}

// Opens the backing file read-write when it can (the undo log reads old
// blocks through it), without O_TRUNC (done through the log) and O_DIRECT.
int OpenBacking(const std::string& rel, int flags, mode_t mode) {
  const int base = (flags & ~(O_ACCMODE | O_TRUNC | O_DIRECT | O_APPEND)) | O_CLOEXEC;
  int fd = ::openat(g.root, rel.c_str(), base | O_RDWR, mode);
  if (fd < 0 && (errno == EACCES || errno == EISDIR || errno == EROFS || errno == ETXTBSY)) {
    fd =
        ::openat(g.root, rel.c_str(), (flags & ~(O_TRUNC | O_DIRECT | O_APPEND)) | O_CLOEXEC, mode);
  }
  if (fd < 0) return Neg();
  if ((flags & O_TRUNC) != 0 && (flags & O_ACCMODE) != O_RDONLY) {
    const int rc = TruncateFd(fd, 0);
    if (rc != 0) {
      ::close(fd);
      return rc;
    }
  }
  return fd;
}

int Open(const char* path, struct fuse_file_info* fi) {
  if (IsCtl(path)) {
    fi->fh = kCtlFh;
    fi->direct_io = 1;
    return 0;
  }
  const int fd = OpenBacking(Rel(path), fi->flags, 0);
  if (fd < 0) return fd;
  fi->fh = static_cast<std::uint64_t>(fd);
  SetOpenFlags(fi);
  return 0;
}

int Create(const char* path, mode_t mode, struct fuse_file_info* fi) {
  const std::string rel = Rel(path);
  const bool existed = Exists(rel);
  const int fd = OpenBacking(rel, fi->flags | O_CREAT, mode);
  if (fd < 0) return fd;
  if (!existed) Logged(OpKind::kCreate, rel, false);
  fi->fh = static_cast<std::uint64_t>(fd);
  SetOpenFlags(fi);
  return 0;
}

int Read(const char* /*path*/, char* buf, size_t size, off_t off, struct fuse_file_info* fi) {
  if (fi->fh == kCtlFh) {
    const auto o = static_cast<std::size_t>(off);
    if (o >= g.reply.size()) return 0;
    const std::size_t n = std::min(size, g.reply.size() - o);
    std::copy_n(g.reply.begin() + static_cast<std::ptrdiff_t>(o), n, buf);
    return static_cast<int>(n);
  }
  const ssize_t n = ::pread(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? Neg() : static_cast<int>(n);
}

int Write(const char* /*path*/, const char* buf, size_t size, off_t off,
          struct fuse_file_info* fi) {
  if (fi->fh == kCtlFh) {
    g.reply = Control(std::string(buf, size));
    return g.reply.empty() ? -EINVAL : static_cast<int>(size);
  }
  const int fd = static_cast<int>(fi->fh);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Neg();
  const auto begin = static_cast<std::uint64_t>(off);
  for (const Fault& f : g.faults) {
    if (f.ino == st.st_ino && begin < f.off + f.len && f.off < begin + size) {
      if (f.err != 0) return -f.err;
      // The lie: success, and only the bytes outside the range are kept.
      if (begin < f.off) (void)::pwrite(fd, buf, f.off - begin, off);
      if (f.off + f.len < begin + size) {
        const std::uint64_t skip = f.off + f.len - begin;
        (void)::pwrite(fd, buf + skip, size - skip, static_cast<off_t>(f.off + f.len));
      }
      return static_cast<int>(size);
    }
  }
  if (FileUndo* u = Track(fd)) {
    SaveRange(*u, begin, size);
    u->unsynced += size;
    g.last = LastWrite{st.st_ino, begin, std::string(buf, size)};
  }
  const ssize_t n = ::pwrite(fd, buf, size, off);
  return n < 0 ? Neg() : static_cast<int>(n);
}

int StatFs(const char* /*path*/, struct statvfs* st) {
  return ::fstatvfs(g.root, st) == 0 ? 0 : Neg();
}

int Release(const char* /*path*/, struct fuse_file_info* fi) {
  if (fi->fh != kCtlFh) ::close(static_cast<int>(fi->fh));
  return 0;
}

int FSync(const char* /*path*/, int /*datasync*/, struct fuse_file_info* fi) {
  if (fi->fh == kCtlFh) return 0;
  struct stat st {};
  if (::fstat(static_cast<int>(fi->fh), &st) != 0) return Neg();
  CommitFile(st.st_ino);
  if (g.last && g.last->ino == st.st_ino) g.last.reset();
  return 0;
}

int FAllocate(const char* /*path*/, int mode, off_t off, off_t len, struct fuse_file_info* fi) {
  const int fd = static_cast<int>(fi->fh);
  if (FileUndo* u = Track(fd)) {
    SaveRange(*u, static_cast<std::uint64_t>(off), static_cast<std::uint64_t>(len));
  }
  return ::fallocate(fd, mode, off, len) == 0 ? 0 : Neg();
}

// An open directory: with nullpath_ok, readdir and fsyncdir may get no path.
struct OpenedDir {
  DIR* dir = nullptr;
  std::string rel;
};

int OpenDir(const char* path, struct fuse_file_info* fi) {
  const int fd = ::openat(g.root, Rel(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Neg();
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return Neg();
  }
  fi->fh = reinterpret_cast<std::uintptr_t>(new OpenedDir{d, Rel(path)});
  return 0;
}

int ReadDir(const char* /*path*/, void* buf, fuse_fill_dir_t fill, off_t /*off*/,
            struct fuse_file_info* fi, enum fuse_readdir_flags /*flags*/) {
  auto* od = reinterpret_cast<OpenedDir*>(fi->fh);
  DIR* d = od->dir;
  ::rewinddir(d);
  const bool root = od->rel == ".";
  while (const dirent* e = ::readdir(d)) {
    if (root && std::strcmp(e->d_name, kTrash) == 0) continue;
    struct stat st {};
    st.st_ino = e->d_ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(e->d_type));
    if (fill(buf, e->d_name, &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
  }
  return 0;
}

int ReleaseDir(const char* /*path*/, struct fuse_file_info* fi) {
  auto* od = reinterpret_cast<OpenedDir*>(fi->fh);
  ::closedir(od->dir);
  delete od;
  return 0;
}

int FSyncDir(const char* path, int /*datasync*/, struct fuse_file_info* fi) {
  CommitDir(fi != nullptr ? reinterpret_cast<OpenedDir*>(fi->fh)->rel : Rel(path));
  return 0;
}

// --- the command line -------------------------------------------------------

int Usage(const std::string& problem) {
  std::cerr << "sag-powerloss: " << problem << " (sag-powerloss --help for usage)\n";
  return 2;
}

int Mount(const std::vector<std::string>& args) {
  if (args.size() < 2) return Usage("mount needs BACKING and MOUNTPOINT");
  for (std::size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "--cache" && i + 1 < args.size()) {
      const std::string& m = args[++i];
      if (m == "direct") {
        g.cache = CacheMode::kDirect;
      } else if (m == "kernel") {
        g.cache = CacheMode::kKernel;
      } else if (m == "writeback") {
        g.cache = CacheMode::kWriteback;
      } else {
        return Usage("--cache must be direct, kernel or writeback, got '" + m + "'");
      }
    } else if (args[i] == "--seed" && i + 1 < args.size()) {
      g.rng.seed(std::stoull(args[++i]));
    } else {
      return Usage("unknown mount option " + args[i]);
    }
  }
  // Opened before the mount, so that BACKING may be MOUNTPOINT itself.
  g.root = ::open(args[0].c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (g.root < 0) {
    std::cerr << "sag-powerloss: open backing directory " << args[0] << ": " << std::strerror(errno)
              << "\n";
    return 1;
  }
  // A trash left by a killed server: its entries' removal counts as durable.
  std::filesystem::remove_all(std::filesystem::path(args[0]) / kTrash);
  if (::mkdirat(g.root, kTrash, 0700) != 0) {
    std::cerr << "sag-powerloss: create " << args[0] << "/" << kTrash << ": "
              << std::strerror(errno) << "\n";
    return 1;
  }
  fuse_operations ops{};
  ops.init = Init;
  ops.destroy = Destroy;
  ops.getattr = GetAttr;
  ops.readlink = ReadLink;
  ops.mknod = MkNod;
  ops.mkdir = MkDir;
  ops.unlink = Unlink;
  ops.rmdir = RmDir;
  ops.symlink = SymLink;
  ops.rename = Rename;
  ops.link = Link;
  ops.chmod = ChMod;
  ops.chown = ChOwn;
  ops.truncate = Truncate;
  ops.utimens = Utimens;
  ops.open = Open;
  ops.create = Create;
  ops.read = Read;
  ops.write = Write;
  ops.statfs = StatFs;
  ops.release = Release;
  ops.fsync = FSync;
  ops.fallocate = FAllocate;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.releasedir = ReleaseDir;
  ops.fsyncdir = FSyncDir;
  std::vector<std::string> fargs{
      "sag-powerloss", "-f", "-s", "-o", "fsname=sag-powerloss,subtype=powerloss", args[1]};
  std::vector<char*> argv;
  argv.reserve(fargs.size());
  for (auto& s : fargs) argv.push_back(s.data());
  const int rc = fuse_main(static_cast<int>(argv.size()), argv.data(), &ops, nullptr);
  std::filesystem::remove_all(std::filesystem::path(args[0]) / kTrash);
  return rc == 0 ? 0 : 1;
}

int SendControl(const std::string& mountpoint, const std::string& line) {
  const std::string path = mountpoint + "/" + kCtl;
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    std::cerr << "sag-powerloss: open " << path << ": " << std::strerror(errno)
              << " (is a sag-powerloss mounted at " << mountpoint << "?)\n";
    return 1;
  }
  if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) {
    std::cerr << "sag-powerloss: '" << line << "' refused by " << mountpoint << ": "
              << std::strerror(errno) << "\n";
    ::close(fd);
    return 1;
  }
  std::string reply(4096, '\0');
  const ssize_t n = ::pread(fd, reply.data(), reply.size(), 0);
  ::close(fd);
  if (n > 0) std::cout << reply.substr(0, static_cast<std::size_t>(n));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::cout << kUsage;
    return args.empty() ? 2 : 0;
  }
  const std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd == "mount") return Mount(args);
  if (args.empty()) return Usage(cmd + " needs MOUNTPOINT");
  if (cmd == "cut") {
    if (args.size() > 2 || (args.size() == 2 && args[1] != "--torn")) {
      return Usage("cut takes MOUNTPOINT [--torn]");
    }
    return SendControl(args[0], args.size() == 2 ? "cut torn" : "cut");
  }
  if (cmd == "sync" || cmd == "stats") return SendControl(args[0], cmd);
  if (cmd == "fault") {
    if (args.size() == 2 && args[1] == "clear") return SendControl(args[0], "clear");
    if (args.size() < 5 || (args[1] != "fail" && args[1] != "lie")) {
      return Usage("fault takes MOUNTPOINT fail|lie PATH OFFSET LENGTH [ERRNO], or clear");
    }
    std::string line = args[1];
    for (std::size_t i = 2; i < args.size(); ++i) line += " " + args[i];
    return SendControl(args[0], line);
  }
  if (cmd == "umount") {
    if (::umount2(args[0].c_str(), 0) != 0) {
      std::cerr << "sag-powerloss: umount " << args[0] << ": " << std::strerror(errno) << "\n";
      return 1;
    }
    return 0;
  }
  return Usage("unknown command " + cmd);
}
