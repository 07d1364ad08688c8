// A progress bar on stderr: "label  [#####.....]  120/3000  4.0%  loss 0.0312  ETA 11:32", the ETA
// from the rate of the last 30 seconds.
// Redrawn in place on a terminal (at most 10 times a second); on a pipe or file, one line
// every 5% so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <string>
#include <utility>

namespace diffuse {

// Items per second over the last `window` seconds of (time, done) observations: an ETA from it
// follows a machine's changing load and forgets the first steps' warm-up, where the average since
// the start would carry both to the end.
class RecentRate {
 public:
  explicit RecentRate(double window_seconds = 30.0) : window_(window_seconds) {}
  void observe(double seconds, int64_t done);
  // NaN until the observations span a second
  double per_second() const;

 private:
  double window_;
  std::deque<std::pair<double, int64_t>> seen_;  // at most one per second, oldest first
};

class ProgressBar {
 public:
  ProgressBar(std::string label, int64_t total, int64_t start = 0, bool enabled = true);
  // `done` items finished; `info` is shown after the counts (e.g. "loss 0.03  812 img/s"). On a
  // terminal the bar redraws in place; in a log it writes a line per 5 %, the last from finish().
  void update(int64_t done, const std::string& info = "");
  void finish(const std::string& info = "");  // final line with total time
  void set_total(int64_t total);              // a total settled after the start (train --minutes)
  // A line of its own between the bar's (on a terminal the bar is cleared and drawn again at the
  // next update); written also where the bar is off.
  void note(const std::string& line);

  double elapsed_seconds() const;

 private:
  void draw(int64_t done, const std::string& info, bool final);

  std::string label_;
  int64_t total_, start_;
  bool enabled_, tty_;
  int64_t last_reported_percent_ = -1;
  std::chrono::steady_clock::time_point begin_, last_draw_;
  RecentRate rate_;
};

// "1:02:03" or "2:03".
std::string format_duration(double seconds);

}  // namespace diffuse
