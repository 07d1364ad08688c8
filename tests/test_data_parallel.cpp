// Data parallelism over c10d (Gloo): two processes on loopback, each with half of a batch, take
// the same step as one process on the whole batch, and a NaN on one rank reaches both. The test
// binary starts itself twice as the two ranks (environment DIFFUSE_DP_OUT or DIFFUSE_DP_MEAN
// set), and each rank writes its parameters after the step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/model/unet.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/data_parallel.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using namespace diffuse;

namespace {

// A fixed batch of 8 with fixed timesteps and targets: the loss is the mean over the batch, so the
// mean of two half-batch losses (equal halves) is the whole batch's loss.
struct Problem {
  torch::Tensor x, t, target;
};
Problem problem() {
  torch::manual_seed(11);
  return {torch::randn({8, 1, 12, 12}), torch::randint(0, 1000, {8}, torch::kLong), torch::randn({8, 1, 12, 12})};
}

UNet fresh_model(uint64_t seed) {
  torch::manual_seed(seed);
  return UNet(unet_config_by_name("tiny", 1, 12));
}

// One AdamW step on rows [begin, end) of the problem; `dp` averages the gradients across ranks.
void one_step(UNet& model, int64_t begin, int64_t end, DataParallel* dp) {
  auto p = problem();
  AdamW opt(model->parameters(), AdamWOptions{});
  auto out = model->forward(p.x.slice(0, begin, end), p.t.slice(0, begin, end));
  (out - p.target.slice(0, begin, end)).pow(2).mean().backward();
  if (dp) dp->average_gradients(model->parameters());
  opt.step(1e-2);
}

}  // namespace

// The rank's side: run only when started by the test below.
TEST(DataParallelWorker, OneStepOnThisRanksHalf) {
  const char* out = std::getenv("DIFFUSE_DP_OUT");
  if (!out) GTEST_SKIP() << "runs only as a rank started by DataParallel.TwoProcessesTakeTheCombinedBatchStep";
  const auto env = distributed_env_from_environment();
  ASSERT_EQ(env.world_size, 2);
  DataParallel dp(env, torch::kCPU);
  // Different seeds on purpose: the broadcast must make the ranks start equal.
  auto model = fresh_model(100 + static_cast<uint64_t>(env.rank));
  dp.broadcast_from_rank0(model->parameters());
  one_step(model, 4 * env.rank, 4 * env.rank + 4, &dp);
  save_safetensors(std::string(out) + "/rank" + std::to_string(env.rank) + ".safetensors", named_state(*model), {});
  dp.barrier();
}

TEST(DataParallel, TwoProcessesTakeTheCombinedBatchStep) {
  if (!gloo_built()) GTEST_SKIP() << "built without Gloo's headers: no CPU collectives";
  diffuse::testing::TempDir dir;
  std::random_device rd;
  const int port = 20000 + static_cast<int>(rd() % 20000);
  const auto [r0, r1] = diffuse::testing::run_two_ranks([&](int rank) {
    return "DIFFUSE_DP_OUT=" + dir.str() + " WORLD_SIZE=2 RANK=" + std::to_string(rank) +
           " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " /proc/" + std::to_string(getpid()) +
           "/exe --gtest_filter=DataParallelWorker.OneStepOnThisRanksHalf";
  });
  ASSERT_EQ(r0.status, 0) << r0.output;
  ASSERT_EQ(r1.status, 0) << r1.output;

  auto single = fresh_model(100);  // rank 0's initial weights, whole batch, one process
  one_step(single, 0, 8, nullptr);
  const auto rank0 = load_safetensors(dir / "rank0.safetensors");
  const auto rank1 = load_safetensors(dir / "rank1.safetensors");
  int64_t compared = 0;
  for (const auto& [name, value] : named_state(*single)) {
    EXPECT_TRUE(torch::allclose(rank0.at(name), rank1.at(name), 0, 0)) << name << ": ranks differ";
    EXPECT_TRUE(torch::allclose(rank0.at(name), value, 1e-4, 1e-6)) << name << ": differs from one process";
    ++compared;
  }
  EXPECT_GT(compared, 10);
}

// The rank's side of the test below: rank 1 holds a NaN loss, rank 0 a finite one.
TEST(DataParallelWorker, MeanOverRanksOfOneNumber) {
  if (!std::getenv("DIFFUSE_DP_MEAN")) GTEST_SKIP() << "runs only as a rank started by DataParallel.ANanOnOneRankReachesEveryRank";
  const auto env = distributed_env_from_environment();
  ASSERT_EQ(env.world_size, 2);
  DataParallel dp(env, torch::kCPU);
  EXPECT_DOUBLE_EQ(dp.mean_over_ranks(1.0 + env.rank), 1.5);  // (1 + 2) / 2
  const double loss = env.rank == 1 ? std::nan("") : 0.25;
  EXPECT_TRUE(std::isnan(dp.mean_over_ranks(loss))) << "rank " << env.rank;
  dp.barrier();
}

// The trainer checks the loss's mean over ranks, so a NaN on one rank stops every rank at the
// same step instead of leaving the others waiting in the next all-reduce.
TEST(DataParallel, ANanOnOneRankReachesEveryRank) {
  if (!gloo_built()) GTEST_SKIP() << "built without Gloo's headers: no CPU collectives";
  std::random_device rd;
  const int port = 20000 + static_cast<int>(rd() % 20000);
  const auto [r0, r1] = diffuse::testing::run_two_ranks([&](int rank) {
    return "DIFFUSE_DP_MEAN=1 WORLD_SIZE=2 RANK=" + std::to_string(rank) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" +
           std::to_string(port) + " /proc/" + std::to_string(getpid()) +
           "/exe --gtest_filter=DataParallelWorker.MeanOverRanksOfOneNumber";
  });
  EXPECT_EQ(r0.status, 0) << r0.output;
  EXPECT_EQ(r1.status, 0) << r1.output;
  EXPECT_NE(r0.output.find("[  PASSED  ] 1 test"), std::string::npos) << r0.output;  // not skipped
}

TEST(DataParallel, EnvironmentIsCheckedWithClearErrors) {
  setenv("WORLD_SIZE", "2", 1);
  setenv("RANK", "2", 1);
  EXPECT_THROW(distributed_env_from_environment(), std::runtime_error);
  setenv("RANK", "x", 1);
  EXPECT_THROW(distributed_env_from_environment(), std::runtime_error);
  unsetenv("WORLD_SIZE");
  unsetenv("RANK");
  EXPECT_FALSE(distributed_env_from_environment().enabled());
}
