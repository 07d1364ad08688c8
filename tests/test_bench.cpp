// The benchmark's in-process A/B (BenchConfig::alternate): pairs of runs, the environment switched
// for the B runs and restored afterwards, the ratio taken pair by pair; its own switches checked.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffuse/bench/benchmark.h"
#include "diffuse/util/environment.h"

namespace {

diffuse::BenchConfig tiny_inference(const std::string& alternate) {
  diffuse::BenchConfig c;
  c.model = "tiny";
  c.task = diffuse::BenchTask::infer;
  c.batch_size = 2;
  c.repeat = 3;
  c.warmup = 0;
  c.alternate = alternate;
  return c;
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

}  // namespace

TEST(Bench, AlternateTimesPairsAndRestoresTheEnvironment) {
  const char* name = "DIFFUSE_BENCH_TEST_SWITCH";
  unsetenv(name);
  auto r = diffuse::run_benchmark(tiny_inference(std::string(name) + "=1"));
  ASSERT_EQ(r.seconds.size(), 3u);
  ASSERT_EQ(r.alternate_seconds.size(), 3u);
  EXPECT_EQ(std::getenv(name), nullptr) << "the variable was unset before and must be again";
  std::vector<double> ratios;
  for (size_t i = 0; i < 3; ++i) ratios.push_back(r.alternate_seconds[i] / r.seconds[i]);
  EXPECT_DOUBLE_EQ(r.alternate_median_ratio, median_of(ratios));
  EXPECT_DOUBLE_EQ(r.alternate_median_seconds, median_of(r.alternate_seconds));

  // a value set before the A/B is the A side's and comes back afterwards
  setenv(name, "before", 1);
  diffuse::run_benchmark(tiny_inference(std::string(name) + "=1"));
  ASSERT_NE(std::getenv(name), nullptr);
  EXPECT_STREQ(std::getenv(name), "before");
  unsetenv(name);

  // without an alternate, no B runs
  r = diffuse::run_benchmark(tiny_inference(""));
  EXPECT_TRUE(r.alternate_seconds.empty());
  EXPECT_EQ(r.alternate_median_ratio, 0.0);
}

TEST(Bench, AlternateRejectsWhatIsNotAnAssignment) {
  for (const std::string bad : {"DIFFUSE_OWN_WINOGRAD", "=1"}) {
    try {
      diffuse::run_benchmark(tiny_inference(bad));
      FAIL() << bad << " was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("VAR=VALUE"), std::string::npos) << e.what();
    }
  }
  auto conv = tiny_inference("DIFFUSE_OWN_WINOGRAD=1");
  conv.task = diffuse::BenchTask::conv;
  EXPECT_THROW(diffuse::run_benchmark(conv), std::invalid_argument);
  // sampling on a GPU replays a CUDA graph captured under A's setting, so B would time A again:
  // refused before anything touches the device (so this holds in a CPU build too), unless graphs are off
  auto graphed = tiny_inference("DIFFUSE_CUDA_CONV_BIAS=0");
  graphed.task = diffuse::BenchTask::sample;
  graphed.device = torch::Device(torch::kCUDA);
  try {
    diffuse::run_benchmark(graphed);
    FAIL() << "an A/B of a captured graph was taken";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("--cuda-graph off"), std::string::npos) << e.what();
  }
}

TEST(Bench, ASwitchOfItsOwnWithAValueItDoesNotTakeIsRefusedNamingIt) {
  for (const char* name : {"DIFFUSE_BF16_WEIGHTS", "DIFFUSE_CUDNN_BENCHMARK"}) {
    diffuse::EnvironmentSwitch bad(name, "yes", /*on=*/true);
    try {
      diffuse::run_benchmark(tiny_inference(""));
      ADD_FAILURE() << name << "=yes was taken";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(std::string(name) + "=yes: expected 0 or 1"), std::string::npos) << e.what();
    }
  }
  diffuse::EnvironmentSwitch off("DIFFUSE_BF16_WEIGHTS", "0", /*on=*/true);
  EXPECT_EQ(diffuse::run_benchmark(tiny_inference("")).seconds.size(), 3u);
}
