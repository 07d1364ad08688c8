// The progress bar in a log (stderr not a terminal, as under ctest): a line per 5 % and the
// final line once.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "diffuse/util/progress.h"
#include "support/temp_dir.h"

namespace {

// What `body` writes to stderr (file descriptor 2), read back from a file.
template <class F>
std::string stderr_of(const std::string& path, F&& body) {
  std::fflush(stderr);
  const int saved = ::dup(STDERR_FILENO);
  FILE* file = std::fopen(path.c_str(), "w");
  ::dup2(::fileno(file), STDERR_FILENO);
  body();
  std::fflush(stderr);
  ::dup2(saved, STDERR_FILENO);
  ::close(saved);
  std::fclose(file);
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

}  // namespace

TEST(Progress, ALogGetsALinePerFivePercentAndTheFinalLineOnce) {
  if (::isatty(STDERR_FILENO)) GTEST_SKIP() << "stderr is a terminal here";
  diffuse::testing::TempDir dir;
  const auto log = stderr_of(dir / "stderr.txt", [] {
    diffuse::ProgressBar bar("steps", 40);
    for (int done = 1; done <= 40; ++done) bar.update(done, "loss 1");
    bar.finish("done");
  });
  EXPECT_EQ(count(log, "40/40"), 1) << log;  // finish's line only
  EXPECT_EQ(count(log, "took"), 1) << log;
  EXPECT_EQ(count(log, "\n"), 20) << log;    // 5 %, 10 %, …, 95 % and the final line
}

TEST(Progress, TheRateIsOverTheLastWindowOfObservations) {
  diffuse::RecentRate rate(30.0);
  EXPECT_TRUE(std::isnan(rate.per_second()));
  rate.observe(0.0, 0);
  rate.observe(0.5, 5);  // under a second after the last: not kept
  EXPECT_TRUE(std::isnan(rate.per_second()));
  for (int s = 1; s <= 20; ++s) rate.observe(s, 10 * s);  // 10 items/s, after a slow start would not matter
  EXPECT_DOUBLE_EQ(rate.per_second(), 10.0);
  for (int s = 21; s <= 60; ++s) rate.observe(s, 200 + 2 * (s - 20));  // the machine gets busy: 2 items/s
  // the span starts at the newest observation at least 30 s old (t = 30): only the busy part counts
  EXPECT_DOUBLE_EQ(rate.per_second(), 2.0);
}
