// A running job's cancel request and its point of no return, decided under
// one lock, so that a cancel racing the job across that point gets exactly
// one of two answers: accepted (the job does not cross and ends failed with
// kCancelled) or refused (the job crossed and goes on to its outcome). Never
// both, and never a half-crossed point.
//
//   the canceller (any thread)         the job (its own thread)
//   Request() -> kAccepted             loops poll flag() / requested()
//            | kPastNoReturn           TryCross() before the irreversible step
//            | kEnded                  EndFailed() when it fails before it
//
// A Device job's point of no return is the bootloader switched to the new
// slot for the trial boot (SetTrial); a DPI job's is the atomic swap.
// Stop() (the daemon stopping) sets flag() too, so downloads and long loops
// stop, but it is no cancel: such a job resumes at the next start.
#pragma once

#include <atomic>
#include <mutex>

namespace sag {

class JobCancel {
 public:
  enum class Answer {
    kAccepted,      // the job will end failed with kCancelled
    kPastNoReturn,  // the job crossed its point of no return: it runs to its outcome
    kEnded,         // the job already ended (or stopped with the agent)
  };

  JobCancel() = default;
  JobCancel(const JobCancel&) = delete;
  JobCancel& operator=(const JobCancel&) = delete;

  // Any thread. Asking twice answers the same.
  Answer Request() {
    const std::lock_guard lock(mu_);
    if (requested_) return Answer::kAccepted;
    if (ended_) return Answer::kEnded;
    if (crossed_) return Answer::kPastNoReturn;
    requested_ = true;
    requested_flag_ = true;
    stop_flag_ = true;
    return Answer::kAccepted;
  }

  // The daemon stops: long steps end at their next check; not a cancel.
  void Stop() { stop_flag_ = true; }

  // The job, right before its point of no return: true = crossed (every
  // later Request() is refused); false = a cancel came first: do not cross.
  [[nodiscard]] bool TryCross() {
    const std::lock_guard lock(mu_);
    if (requested_) return false;
    crossed_ = true;
    return true;
  }

  // The job ends before its point of no return (failed, or stopped to
  // resume later): later requests are refused (kEnded). Returns whether a
  // cancel was accepted before: the job then ends with kCancelled, whatever
  // else stopped it.
  [[nodiscard]] bool EndFailed() {
    const std::lock_guard lock(mu_);
    ended_ = true;
    return requested_;
  }

  // The job ended (any outcome): later requests are refused.
  void End() {
    const std::lock_guard lock(mu_);
    ended_ = true;
  }

  // Polled by long loops between chunks: a cancel was accepted.
  [[nodiscard]] bool requested() const { return requested_flag_.load(); }
  // A cancel was accepted or the daemon stops: what downloads watch
  // (net::DownloadOptions::cancel).
  [[nodiscard]] const std::atomic<bool>* flag() const { return &stop_flag_; }
  [[nodiscard]] bool stopping() const { return stop_flag_.load(); }

 private:
  std::mutex mu_;
  bool requested_ = false;  // guarded by mu_
  bool crossed_ = false;    // guarded by mu_
  bool ended_ = false;      // guarded by mu_
  std::atomic<bool> requested_flag_{false};
  std::atomic<bool> stop_flag_{false};
};

}  // namespace sag
