#include "diffuse/util/progress.h"

#include <unistd.h>

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

ProgressBar::ProgressBar(std::string label, int64_t total, int64_t start, bool enabled)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), start_(start), enabled_(enabled),
      tty_(::isatty(STDERR_FILENO) != 0), begin_(std::chrono::steady_clock::now()), last_draw_() {}

double ProgressBar::elapsed_seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin_).count();
}

void ProgressBar::update(int64_t done, const std::string& info) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
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
  const double fraction = static_cast<double>(done) / static_cast<double>(total_);
  const int width = 24;
  const int filled = static_cast<int>(fraction * width);
  std::string bar(filled, '#');
  bar += std::string(width - filled, '.');
  const double elapsed = elapsed_seconds();
  const int64_t done_here = done - start_;
  const double eta = done_here > 0 ? elapsed / static_cast<double>(done_here) * static_cast<double>(total_ - done) : NAN;
  std::string timing = final ? "took " + format_duration(elapsed) : "ETA " + format_duration(eta);
  std::fprintf(stderr, "%s%s [%s] %lld/%lld %5.1f%%  %s  %s%s", tty_ ? "\r\033[K" : "", label_.c_str(), bar.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), 100.0 * fraction, info.c_str(),
               timing.c_str(), (tty_ && !final) ? "" : "\n");
  std::fflush(stderr);
}

}  // namespace diffuse
