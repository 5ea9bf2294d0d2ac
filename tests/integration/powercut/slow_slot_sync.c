// A slow flush of the slot files, for the delta power-cut campaign
// (PowerCutDelta): fsync and fdatasync of a file named slot-a.img or
// slot-b.img wait SAG_SLOW_SYNC_MS milliseconds before the real call, as a
// flash device's flush of a few hundred KiB may. The delta install syncs the
// target slot at every checkpoint before it records the checkpoint in the job
// journal; with an instant flush the campaign's cuts, spread over seconds,
// almost never land between the two, so an agent that recorded first would
// go unnoticed. With the wait, many cuts land in a checkpoint's sync.
// Preloaded into the agent by a wrapper script the test writes. Plain C
// without sanitizers, like sag-powerloss-syncfs.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void WaitIfSlot(int fd) {
  const char* ms = getenv("SAG_SLOW_SYNC_MS");
  if (ms == NULL) return;
  const long wait_ms = strtol(ms, NULL, 10);
  if (wait_ms <= 0 || wait_ms > 10000) return;
  char link[64];
  char path[PATH_MAX];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  const ssize_t n = readlink(link, path, sizeof path - 1);
  if (n <= 0) return;
  path[n] = '\0';
  const char* slash = strrchr(path, '/');
  const char* name = slash != NULL ? slash + 1 : path;
  if (strcmp(name, "slot-a.img") != 0 && strcmp(name, "slot-b.img") != 0) return;
  const int saved = errno;
  struct timespec t = {wait_ms / 1000, (wait_ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
  errno = saved;
}

int fsync(int fd) {
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
  if (real == NULL) {
    errno = ENOSYS;
    return -1;
  }
  WaitIfSlot(fd);
  return real(fd);
}

int fdatasync(int fd) {
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
  if (real == NULL) {
    errno = ENOSYS;
    return -1;
  }
  WaitIfSlot(fd);
  return real(fd);
}
