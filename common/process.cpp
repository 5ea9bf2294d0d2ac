#include "common/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace sag {

extern "C" char** environ;  // NOLINT(readability-redundant-declaration)

namespace {

using Clock = std::chrono::steady_clock;

std::string JoinArgv(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    out += a;
  }
  return out;
}

}  // namespace

Expected<CommandResult> RunCommand(const std::vector<std::string>& argv,
                                   const CommandOptions& options) {
  if (argv.empty()) return Error(Errc::kInvalidArgument, "empty command");
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return MakeErrno(Errc::kIo, "pipe");

  // Everything the child needs is prepared before fork: after fork in a
  // threaded process only async-signal-safe calls are allowed.
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<std::string> env_storage;
  for (char** e = environ; *e != nullptr; ++e) env_storage.emplace_back(*e);
  for (const auto& kv : options.env) env_storage.push_back(kv);
  std::vector<char*> envp;
  envp.reserve(env_storage.size() + 1);
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    return MakeErrno(Errc::kIo, "fork for " + argv[0]);
  }
  if (pid == 0) {
    // The daemon blocks SIGTERM/SIGINT (it takes them from a signalfd) and
    // may ignore others; both survive exec. A health check's `timeout`, or an
    // engine a hook starts, must be stoppable: default dispositions first
    // (so no handler of ours runs once unblocked), then an empty mask.
    // sigaction and sigprocmask are async-signal-safe.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    ::sigemptyset(&dfl.sa_mask);
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig != SIGKILL && sig != SIGSTOP) (void)::sigaction(sig, &dfl, nullptr);
    }
    sigset_t none;
    ::sigemptyset(&none);
    (void)::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::setpgid(0, 0);  // own process group, so a timeout kills its children too
    ::dup2(pipefd[1], STDOUT_FILENO);
    ::dup2(pipefd[1], STDERR_FILENO);
    const int devnull = ::open("/dev/null", O_RDONLY);
    if (devnull >= 0) ::dup2(devnull, STDIN_FILENO);
    // Nothing else of ours: Asio's sockets, the slot, the journal and the
    // signalfd are not all close-on-exec, and an engine a hook starts may
    // outlive the daemon (it would hold the channel's connection open, or
    // the slot). close_range(2) is a system call: async-signal-safe.
    (void)::close_range(3, ~0U, 0);
    ::execvpe(args[0], args.data(), envp.data());
    const char msg[] = "exec failed: ";
    (void)!::write(STDERR_FILENO, msg, sizeof msg - 1);
    const char* err = ::strerror(errno);  // NOLINT(concurrency-mt-unsafe)
    (void)!::write(STDERR_FILENO, err, ::strlen(err));
    ::_exit(127);
  }
  ::setpgid(pid, pid);
  ::close(pipefd[1]);

  CommandResult result;
  const auto deadline = Clock::now() + options.timeout;
  bool eof = false;
  char buf[4096];
  while (!eof) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      result.timed_out = true;
      ::kill(-pid, SIGKILL);
      break;
    }
    pollfd pfd{pipefd[0], POLLIN, 0};
    const int r = ::poll(&pfd, 1, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) break;
    if (r <= 0) continue;
    const ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      eof = true;
      break;
    }
    const std::size_t room =
        options.max_output - std::min(options.max_output, result.output.size());
    result.output.append(buf, std::min(room, static_cast<std::size_t>(n)));
  }
  ::close(pipefd[0]);

  // The output pipe closes when the command exits (or closes its own copy);
  // wait for the exit within what is left of the deadline.
  int status = 0;
  for (;;) {
    const pid_t w = ::waitpid(pid, &status, result.timed_out ? 0 : WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) return MakeErrno(Errc::kIo, "waitpid " + argv[0]);
    if (w == 0) {
      if (Clock::now() >= deadline) {
        result.timed_out = true;
        ::kill(-pid, SIGKILL);
        continue;
      }
      ::usleep(2000);
    }
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  return result;
}

Status CheckCommand(const std::vector<std::string>& argv, const CommandOptions& options) {
  SAG_TRY(auto r, RunCommand(argv, options));
  auto tail = [&] {
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    if (out.size() > 400) out = "..." + out.substr(out.size() - 400);
    return out.empty() ? std::string() : " (output: " + out + ")";
  };
  if (r.timed_out) {
    return Error(Errc::kTimeout, "'" + JoinArgv(argv) + "' did not finish within " +
                                     std::to_string(options.timeout.count()) + " ms" + tail());
  }
  if (r.signal != 0) {
    return Error(Errc::kCommandFailed, "'" + JoinArgv(argv) + "' was killed by signal " +
                                           std::to_string(r.signal) + tail());
  }
  if (r.exit_code != 0) {
    return Error(Errc::kCommandFailed, "'" + JoinArgv(argv) + "' exited with status " +
                                           std::to_string(r.exit_code) + tail());
  }
  return Ok();
}

}  // namespace sag
