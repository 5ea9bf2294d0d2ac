// Mutation check (issue 13): fsync, fdatasync and syncfs do nothing and
// report success. LD_PRELOAD it into the agent and the tests (ASan builds:
// ASAN_OPTIONS=verify_asan_link_order=0); a power-cut test that still passes
// cannot notice a missing sync.
//   cc -shared -fPIC -o nosync.so tools/powerloss/nosync.c
int fsync(int fd) {
  (void)fd;
  return 0;
}
int fdatasync(int fd) {
  (void)fd;
  return 0;
}
int syncfs(int fd) {
  (void)fd;
  return 0;
}
