#include "diffuse/util/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace diffuse {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buf, sizeof buf, "%lld:%02lld", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}

void RecentRate::observe(double seconds, int64_t done) {
  if (!seen_.empty() && seconds - seen_.back().first < 1.0) return;
  seen_.emplace_back(seconds, done);
  // keep the newest observation that is at least `window` old, as the start of the span
  while (seen_.size() > 2 && seconds - seen_[1].first >= window_) seen_.pop_front();
}

double RecentRate::per_second() const {
  if (seen_.size() < 2) return NAN;
  const auto& [t0, d0] = seen_.front();
  const auto& [t1, d1] = seen_.back();
  return static_cast<double>(d1 - d0) / (t1 - t0);
}

ProgressBar::ProgressBar(std::string label, int64_t total, int64_t start, bool enabled)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), start_(start), enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) != 0), begin_(std::chrono::steady_clock::now()), last_draw_() {}

void ProgressBar::set_total(int64_t total) { total_ = std::max<int64_t>(total, 1); }

void ProgressBar::note(const std::string& line) {
  std::fprintf(stderr, "%s%s\n", enabled_ && tty_ ? "\r\033[K" : "", line.c_str());
  last_draw_ = {};  // redraw at the next update
  std::fflush(stderr);
}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
}

void ProgressBar::update(int64_t done, const std::string& info) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  rate_.observe(std::chrono::duration<double>(now - begin_).count(), done);
  if (tty_) {
    if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  } else {
    // A log gets a line per 5 %; the last one is finish()'s (with the time taken), not a repeat.
    if (done >= total_) return;
    const int64_t percent = done * 100 / total_;
    if (percent / 5 == last_reported_percent_ / 5) return;
    last_reported_percent_ = percent;
  }
  last_draw_ = now;
  draw(done, info, false);
}

void ProgressBar::finish(const std::string& info) {
  if (!enabled_) return;
  draw(total_, info, true);
}

void ProgressBar::draw(int64_t done, const std::string& info, bool final) {
  done = std::min(done, total_);  // a total reckoned a little low still ends at 100 %
  const double fraction = static_cast<double>(done) / static_cast<double>(total_);
  const int width = 24;
  const int filled = static_cast<int>(fraction * width);
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  const double elapsed = elapsed_seconds();
  const int64_t done_here = done - start_;
  const double recent = rate_.per_second();
  const double rate = std::isfinite(recent) && recent > 0 ? recent
                      : done_here > 0                     ? static_cast<double>(done_here) / elapsed
                                                          : NAN;
  const double eta = static_cast<double>(total_ - done) / rate;
  std::string timing = final ? "took " + format_duration(elapsed) : "ETA " + format_duration(eta);
  std::fprintf(stderr, "%s%s [%s] %lld/%lld %5.1f%%  %s  %s%s", tty_ ? "\r\033[K" : "", label_.c_str(), bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), 100.0 * fraction, info.c_str(),
               timing.c_str(), (tty_ && !final) ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace diffuse
