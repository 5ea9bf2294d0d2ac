// syncfs(2) for programs whose storage is on sag-powerloss (LD_PRELOADed by
// `sag-sim boot --powerloss`, found next to the sag-powerloss binary): the
// kernel sends FUSE_SYNCFS to virtiofs only, so the medium never hears of a
// syncfs and would lose at a cut what a real disk keeps (docs/power-loss.md,
// Limits). After the real call succeeded on the file system whose control
// file is $SAG_POWERLOSS_CONTROL, the medium is told to make everything
// durable: what syncfs does to the file system it is called on. The DPI
// staging relies on it (dpi/extract.cpp). Plain C without sanitizers: it is
// also preloaded into the hooks and scripts the agent starts.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

int syncfs(int fd) {
  int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "syncfs");
  if (real == NULL) {
    errno = ENOSYS;
    return -1;
  }
  const int r = real(fd);
  const char* control = getenv("SAG_POWERLOSS_CONTROL");
  if (r != 0 || control == NULL) return r;
  struct stat of_fd;
  struct stat of_control;
  if (fstat(fd, &of_fd) != 0 || stat(control, &of_control) != 0) return r;
  if (of_fd.st_dev != of_control.st_dev) return r;  // another file system
  const int c = open(control, O_RDWR | O_CLOEXEC);
  if (c < 0) return -1;
  const int ok = write(c, "sync", 4) == 4;
  close(c);
  if (!ok) {
    errno = EIO;
    return -1;
  }
  return 0;
}
