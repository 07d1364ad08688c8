// Data parallelism over c10d (Gloo on the CPU, NCCL on GPUs): two processes on loopback, each with
// half of a batch, take the same step as one process on the whole batch, and a NaN on one rank
// reaches both. The test binary starts itself twice as the two ranks (environment DIFFUSE_DP_OUT
// or DIFFUSE_DP_MEAN set; DIFFUSE_DP_DEVICE=cuda for NCCL), and each rank writes its parameters
// after the step.
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
void one_step(UNet& model, int64_t begin, int64_t end, DataParallel* dp, torch::Device device = torch::kCPU) {
  auto p = problem();
  AdamW opt(model->parameters(), AdamWOptions{});
  auto rows = [&](const torch::Tensor& v) { return v.slice(0, begin, end).to(device); };
  auto out = model->forward(rows(p.x), rows(p.t));
  (out - rows(p.target)).pow(2).mean().backward();
  if (dp) dp->average_gradients(model->parameters());
  opt.step(1e-2);
}

// DIFFUSE_DP_DEVICE=cuda: rank r on GPU r (modulo the GPUs there are), TF32 off so that the
// comparison with one process is one of float32 sums in another order.
torch::Device rank_device(const DistributedEnv& env) {
  const char* kind = std::getenv("DIFFUSE_DP_DEVICE");
  if (!kind || std::string(kind) != "cuda") return torch::kCPU;
  at::globalContext().setAllowTF32CuDNN(false);
  at::globalContext().setAllowTF32CuBLAS(false);
  const auto gpus = static_cast<int>(torch::cuda::device_count());
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank % std::max(gpus, 1)));
}

}  // namespace

// The rank's side: run only when started by the test below.
TEST(DataParallelWorker, OneStepOnThisRanksHalf) {
  const char* out = std::getenv("DIFFUSE_DP_OUT");
  if (!out) GTEST_SKIP() << "runs only as a rank started by DataParallel.TwoProcessesTakeTheCombinedBatchStep";
  const auto env = distributed_env_from_environment();
  ASSERT_EQ(env.world_size, 2);
  const torch::Device device = rank_device(env);
  DataParallel dp(env, device);
  // Different seeds on purpose: the broadcast must make the ranks start equal.
  auto model = fresh_model(100 + static_cast<uint64_t>(env.rank));
  model->to(device);
  dp.broadcast_from_rank0(model->parameters());
  one_step(model, 4 * env.rank, 4 * env.rank + 4, &dp, device);
  EXPECT_DOUBLE_EQ(dp.mean_over_ranks(1.0 + env.rank), 1.5);  // (1 + 2) / 2
  model->to(torch::kCPU);
  save_safetensors(std::string(out) + "/rank" + std::to_string(env.rank) + ".safetensors", named_state(*model), {});
  dp.barrier();
}

namespace {

// Two ranks of this binary, each with half of the problem, on `device_kind` ("cpu" or "cuda"),
// writing their parameters to `dir`.
std::pair<diffuse::testing::CommandResult, diffuse::testing::CommandResult> two_ranks_take_a_step(
    const std::string& dir, const std::string& device_kind) {
  std::random_device rd;
  const int port = 20000 + static_cast<int>(rd() % 20000);
  return diffuse::testing::run_two_ranks([&](int rank) {
    // a time limit: a rank whose peer died would otherwise wait in a collective for good
    return "DIFFUSE_DP_OUT=" + dir + " DIFFUSE_DP_DEVICE=" + device_kind +
           " WORLD_SIZE=2 RANK=" + std::to_string(rank) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
           " timeout 60 /proc/" + std::to_string(getpid()) +
           "/exe --gtest_filter=DataParallelWorker.OneStepOnThisRanksHalf";
  });
}

// Both ranks end with equal parameters, and with those of one process's step on the whole batch.
void expect_the_combined_batch_step(const diffuse::testing::TempDir& dir, torch::Device device) {
  auto single = fresh_model(100);  // rank 0's initial weights, whole batch, one process
  single->to(device);
  one_step(single, 0, 8, nullptr, device);
  single->to(torch::kCPU);
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

}  // namespace

TEST(DataParallel, TwoProcessesTakeTheCombinedBatchStep) {
  if (!gloo_built()) GTEST_SKIP() << "built without Gloo's headers: no CPU collectives";
  diffuse::testing::TempDir dir;
  const auto [r0, r1] = two_ranks_take_a_step(dir.str(), "cpu");
  ASSERT_EQ(r0.status, 0) << r0.output;
  ASSERT_EQ(r1.status, 0) << r1.output;
  expect_the_combined_batch_step(dir, torch::kCPU);
}

// The same over NCCL. NCCL refuses two ranks of one communicator on one GPU, so with a single GPU
// the test says so and is skipped.
TEST(Cuda, NcclTwoProcessesTakeTheCombinedBatchStep) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device in this build or machine";
  if (!nccl_built()) GTEST_SKIP() << "LibTorch without NCCL";
  diffuse::testing::TempDir dir;
  const auto [r0, r1] = two_ranks_take_a_step(dir.str(), "cuda");
  if (torch::cuda::device_count() < 2 && (r0.status != 0 || r1.status != 0)) {
    const auto& failed = r0.status != 0 ? r0.output : r1.output;
    GTEST_SKIP() << "one GPU, and the ranks failed on it (NCCL's duplicate-GPU check?): "
                 << failed.substr(failed.size() > 400 ? failed.size() - 400 : 0);
  }
  ASSERT_EQ(r0.status, 0) << r0.output;
  ASSERT_EQ(r1.status, 0) << r1.output;
  expect_the_combined_batch_step(dir, torch::Device(torch::kCUDA, 0));
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
