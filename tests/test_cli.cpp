// The `diffuse` binary as a user meets it: output formats, and bad input → a clear message and
// a non-zero exit.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/precision.h"
#include "diffuse/train/data_parallel.h"
#include "diffuse_build_config.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using diffuse::testing::TempDir;

namespace {

using Run = diffuse::testing::CommandResult;

// `diffuse ARGS`, with stdout and stderr together.
Run run(const std::string& args) { return diffuse::testing::run_command(std::string(DIFFUSE_BINARY) + " " + args); }

// An IDX data set in `dir` whose train and test splits hold the same 120 pseudo-random 28×28
// images, labelled 0..9 in turn: small enough that the cFID's classifier trains in seconds.
void write_small_idx(const std::string& dir) {
  std::filesystem::create_directories(dir);
  auto be32 = [](uint32_t v) { return std::string{char(v >> 24), char(v >> 16), char(v >> 8), char(v)}; };
  for (const std::string split : {"train", "t10k"}) {
    const uint32_t n = 120;
    std::string images = be32(0x803) + be32(n) + be32(28) + be32(28), labels = be32(0x801) + be32(n);
    for (uint32_t i = 0; i < n * 28 * 28; ++i) images += char((i * 2654435761u) >> 24);
    for (uint32_t i = 0; i < n; ++i) labels += char(i % 10);
    diffuse::write_file_atomic(dir + "/" + split + "-images-idx3-ubyte", images);
    diffuse::write_file_atomic(dir + "/" + split + "-labels-idx1-ubyte", labels);
  }
}

}  // namespace

TEST(Cli, ScheduleCsvHasTheDocumentedHeaderAndFullPrecision) {
  auto r = run("schedule --schedule linear --timesteps 10");
  ASSERT_EQ(r.status, 0) << r.output;
  std::istringstream lines(r.output);
  std::string header, first;
  std::getline(lines, header);
  std::getline(lines, first);
  EXPECT_EQ(header, "t,beta,alpha,alpha_bar,posterior_variance,posterior_mean_coef1,posterior_mean_coef2,snr");
  EXPECT_EQ(first.substr(0, 9), "1,0.0001,");
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 11);
  auto ts = run("schedule --sampler ddim --steps 10 --spacing trailing");
  EXPECT_EQ(ts.output, "999,899,799,699,599,499,399,299,199,99\n");
}

TEST(Cli, BadFlagsAreRejectedWithAMessage) {
  for (const std::string args : {"schedule --schedule quadratic",
                                 "schedule --steps 0 --sampler ddim",
                                 "train --data mnist",
                                 "sample --checkpoint /no/such/file.safetensors --out x.png",
                                 "frobnicate",
                                 "sample --sampler euler-a --checkpoint x",
                                 "bench --what sample --cuda-graph everything",
                                 "sample --checkpoint x --eta 1e308 --out x.png",
                                 "sample --checkpoint x --eta nan",
                                 "sample --checkpoint x --guidance 1e308",
                                 "train --data mnist --out x --ema-decay nan",
                                 "train --data mnist --out x --label-dropout nan",
                                 "train --data mnist --out x --t-sampling lognormal",
                                 "train --data mnist --out x --t-sampling log-snr-normal --log-snr-std 0",
                                 "train --data mnist --out x --adam-beta2 1",
                                 "train --data mnist --out x --adam-beta1 -0.1",
                                 "train --data mnist --out x --ema-sigma-rel 0.3",
                                 "train --data mnist --out x --ema-snapshot-every -1",
                                 "train --data mnist --out x --minutes -1",
                                 "train --data mnist --out x --minutes nan",
                                 "ema --run . --sigma-rel 0",
                                 "ema --run /no/such/dir --sigma-rel 0.1"}) {
    auto r = run(args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_FALSE(r.output.empty()) << args;
  }
  // a mistyped flag gets the closest one; an image named .jpg is refused (PNG is what is written)
  auto lonely = run("train --data mnist --out x --log-snr-std 1");  // a flag of a choice not made
  EXPECT_NE(lonely.status, 0);
  EXPECT_NE(lonely.output.find("belong to --t-sampling log-snr-normal"), std::string::npos) << lonely.output;
  auto typo = run("train --data mnist --out x --stpes 5");
  EXPECT_NE(typo.status, 0);
  EXPECT_NE(typo.output.find("--stpes: did you mean --steps?"), std::string::npos) << typo.output;
  auto jpg = run("sample --checkpoint " + std::string(DIFFUSE_BINARY) + " --out /tmp/x.jpg");
  EXPECT_NE(jpg.status, 0);
  EXPECT_NE(jpg.output.find("images are written as PNG"), std::string::npos) << jpg.output;
  // a runtime switch holding a value it does not take stops the program at once, named
  auto bad_switch = diffuse::testing::run_command("DIFFUSE_CHANNEL_BLOCK=12 " + std::string(DIFFUSE_BINARY) +
                                                  " schedule --sampler ddim --steps 10");
  EXPECT_NE(bad_switch.status, 0);
  EXPECT_NE(bad_switch.output.find("DIFFUSE_CHANNEL_BLOCK=12: expected 8 or 16"), std::string::npos)
      << bad_switch.output;
  auto r = run("schedule --sampler ddim --steps 2000");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("sampler steps must be in [1, 1000]"), std::string::npos) << r.output;
  // an output file in a directory that is not there: refused when the flags are read, before any work
  for (const std::string args : {std::string("show schedule --out /no/such/dir/s.png"),
                                 "sample --checkpoint " + std::string(DIFFUSE_BINARY) + " --out /no/such/dir/x.png"}) {
    r = run(args);
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.output.find("no directory '/no/such/dir'"), std::string::npos) << args << ": " << r.output;
  }
}

TEST(Cli, CorruptDataAndCheckpointsAreClearErrors) {
  TempDir dir;
  std::filesystem::create_directories(dir / "data");
  diffuse::write_file_atomic(dir / "data/train-images-idx3-ubyte", std::string("\0\0\x08\x03\0\0\0\x05", 8));
  diffuse::write_file_atomic(dir / "data/train-labels-idx1-ubyte", std::string("\0\0\x08\x01\0\0\0\x05", 8));
  auto r = run("train --data " + dir / "data" + " --out " + dir / "run" + " --steps 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("train-images-idx3-ubyte"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("truncated"), std::string::npos) << r.output;

  diffuse::write_file_atomic(dir / "bad.safetensors", "garbage that is not a checkpoint");
  r = run("sample --checkpoint " + dir / "bad.safetensors" + " --out " + dir / "x.png");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("bad.safetensors"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "x.png"));
}

TEST(Cli, BenchPrintsOneJsonObjectPerRun) {
  for (const std::string what : {"train", "infer", "sample"}) {
    auto r = diffuse::testing::run_command(std::string(DIFFUSE_BINARY) + " --threads 1 bench --model tiny --what " + what +
                                           " --batch-size 2 --steps 2 --repeat 2 --warmup 0 --json");
    ASSERT_EQ(r.status, 0) << what << ": " << r.output;
    // stderr (the choices made, e.g. the convolution kernels) comes first; the JSON is the last line
    const auto last_line = r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1);
    const auto j = nlohmann::json::parse(last_line);
    EXPECT_EQ(j.at("what"), what);
    EXPECT_EQ(j.at("seconds").size(), 2u);
    EXPECT_GT(j.at("images_per_second").get<double>(), 0.0);
    EXPECT_EQ(j.at("parameters").get<int64_t>(), 44969);  // tiny at 1×28×28, as bench/reference_unet.py counts
    EXPECT_GT(j.at("achieved_gflops_per_second").get<double>(), 0.0);
    EXPECT_EQ(j.at("cuda_graph"), "off");  // the CPU
  }
  // --alternate: the B runs and their ratio in the same object
  auto r = diffuse::testing::run_command(std::string(DIFFUSE_BINARY) +
                                         " --threads 1 bench --model tiny --what infer --batch-size 2 --repeat 2 "
                                         "--warmup 0 --json --alternate DIFFUSE_CONV_ALGORITHM=direct");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1));
  EXPECT_EQ(j.at("alternate").at("setting"), "DIFFUSE_CONV_ALGORITHM=direct");
  EXPECT_EQ(j.at("alternate").at("seconds").size(), 2u);
  EXPECT_GT(j.at("alternate").at("median_ratio").get<double>(), 0.0);
  // the named model reshaped, as `train --channels` would train it
  r = run("--threads 1 bench --model tiny --channels 16 --what infer --batch-size 2 --repeat 1 --warmup 0 --json");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto wider = nlohmann::json::parse(r.output.substr(r.output.rfind('\n', r.output.size() - 2) + 1));
  EXPECT_GT(wider.at("parameters").get<int64_t>(), 44969);
  r = run("bench --what everything");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--what"), std::string::npos) << r.output;
  r = run("bench --device cuda --what infer --model tiny");
  if (!torch::cuda::is_available()) {
    EXPECT_NE(r.status, 0);
    EXPECT_NE(r.output.find("no CUDA device"), std::string::npos) << r.output;
  }
}

// --profile: the trace appears whole (written beside the target, then renamed), and a path that
// cannot be written fails at once with its name, before the timed runs (LibTorch's profiler only
// logs that it could not open a file, and the command used to end with status 0).
TEST(Cli, BenchProfileIsWrittenWholeOrRefusedAtOnce) {
  TempDir dir;
  const std::string bench = std::string(DIFFUSE_BINARY) +
                            " --threads 1 bench --model tiny --what infer --batch-size 2 --repeat 2 --warmup 0 --profile ";
  auto r = diffuse::testing::run_command(bench + dir / "no/such/dir/trace.json");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("no/such/dir/trace.json"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("run 1/2"), std::string::npos) << "refused only after the runs: " << r.output;
  r = diffuse::testing::run_command(bench + dir / "trace.json");
  if (r.output.find("no legacy profiler") != std::string::npos) GTEST_SKIP() << "this LibTorch has no RecordProfile";
  ASSERT_EQ(r.status, 0) << r.output;
  const auto trace = nlohmann::json::parse(diffuse::read_file(dir / "trace.json"));
  EXPECT_FALSE(trace.empty());
  int files = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator(dir.str())) ++files;
  EXPECT_EQ(files, 1) << "the temporary trace was left beside the trace";
}

// ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN from creating bf16 convolutions even where the CPU flags
// say bf16: `auto` must then take fp32, and an explicit bf16 must fail with a message, not with
// oneDNN's "could not create a primitive descriptor iterator" from inside the first layer.
TEST(Cli, Bf16WhereOneDnnCreatesNoBf16ConvolutionIsAClearChoiceOrError) {
  const std::string capped = "ONEDNN_MAX_CPU_ISA=AVX2 " + std::string(DIFFUSE_BINARY) +
                             " --threads 1 bench --model tiny --what infer --batch-size 2 --repeat 1 --warmup 0 ";
  auto r = diffuse::testing::run_command(capped + "--precision auto");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("precision: fp32"), std::string::npos) << r.output;
  // where the flags say bf16, LibTorch's and oneDNN's bf16 convolutions both go through oneDNN
  if (!diffuse::cpu_has_native_bf16()) GTEST_SKIP() << "no native bf16 here: the explicit bf16 ask is not capped";
  // LibTorch 2.x's own bf16 convolution runs under the cap (slowly, seen on PyTorch 2.11): only the
  // project's oneDNN kernels refuse it
  if (!diffuse::onednn_conv_built()) GTEST_SKIP() << "built without oneDNN: LibTorch's bf16 convolution runs capped";
  r = diffuse::testing::run_command(capped + "--precision bf16");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("bf16 convolutions do not run on this CPU"), std::string::npos) << r.output;
}

TEST(Cli, TrainWithTwoProcessesAsTorchrunStartsThem) {
  if (!diffuse::gloo_built()) GTEST_SKIP() << "built without Gloo's headers: no CPU collectives";
  TempDir dir;
  const int port = 20000 + static_cast<int>(::getpid() % 20000);
  const auto [r0, r1] = diffuse::testing::run_two_ranks([&](int rank) {
    return "WORLD_SIZE=2 RANK=" + std::to_string(rank) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " +
           DIFFUSE_BINARY + " --threads 1 train --data mnist --limit 32 --model tiny --steps 3 --batch-size 4 "
           "--timesteps 50 --preview-n 4 --no-progress --out " + dir / "run";
  });
  ASSERT_EQ(r0.status, 0) << r0.output;
  ASSERT_EQ(r1.status, 0) << r1.output;
  EXPECT_NE(r0.output.find("rank 0 of 2"), std::string::npos) << r0.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "run/checkpoint.safetensors"));  // written by rank 0 alone
  EXPECT_EQ(r1.output.find("checkpoint:"), std::string::npos) << r1.output;
  // a bad rank is refused before anything starts
  auto bad = diffuse::testing::run_command("WORLD_SIZE=2 RANK=5 " + std::string(DIFFUSE_BINARY) +
                                           " train --data mnist --limit 8 --model tiny --steps 1 --out " + dir / "bad");
  EXPECT_NE(bad.status, 0);
  EXPECT_NE(bad.output.find("RANK=5"), std::string::npos) << bad.output;
}

// Several processes: a run stopped and resumed ends where the same run without a stop ends, and
// a signal to one rank stops every rank at one step, each with its state saved. LibTorch's
// convolutions: the oneDNN path times Winograd against direct afresh in each process (the tests
// keep no timing cache), and two choices would differ in the last bits.
TEST(Cli, TwoProcessesResumeAsIfNeverStoppedAndStopTogether) {
  if (!diffuse::gloo_built()) GTEST_SKIP() << "built without Gloo's headers: no CPU collectives";
  TempDir dir;
  int port = 20000 + static_cast<int>((::getpid() * 7) % 20000);
  auto train = [&](const std::string& out, int steps, const std::string& extra) {
    ++port;
    return diffuse::testing::run_two_ranks([&](int rank) {
      return "WORLD_SIZE=2 RANK=" + std::to_string(rank) +
             " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " " + DIFFUSE_BINARY +
             " --threads 1 train --data mnist --limit 32 --model tiny --batch-size 4 --timesteps 50 "
             "--preview-every 0 --preview-n 2 --no-progress --lr-schedule constant --warmup 0 --conv-kernels aten "
             "--steps " +
             std::to_string(steps) + " --out " + out + extra;
    });
  };
  const std::string whole = dir / "whole", resumed = dir / "resumed";
  for (const auto& [r0, r1] : {train(whole, 6, ""), train(resumed, 3, ""), train(resumed, 6, " --resume")}) {
    ASSERT_EQ(r0.status, 0) << r0.output;
    ASSERT_EQ(r1.status, 0) << r1.output;
  }
  const auto a = diffuse::load_safetensors(whole + "/train_state.safetensors");
  const auto b = diffuse::load_safetensors(resumed + "/train_state.safetensors");
  int64_t compared = 0;
  for (const auto& [name, tensor] : a.tensors) {
    if (name.rfind("model/", 0) != 0 && name.rfind("adam_", 0) != 0) continue;
    EXPECT_TRUE(torch::equal(tensor, b.at(name))) << name;
    ++compared;
  }
  EXPECT_GT(compared, 20);
  EXPECT_EQ(b.metadata.at("world_size"), "2");
  // one process cannot resume a run of two
  auto alone =
      run("--threads 1 train --data mnist --limit 32 --model tiny --batch-size 4 --timesteps 50 --steps 9 "
          "--no-progress --resume --out " +
          resumed);
  EXPECT_NE(alone.status, 0);
  EXPECT_NE(alone.output.find("WORLD_SIZE=2"), std::string::npos) << alone.output;

  // SIGTERM to rank 1 alone: both stop, both save, with the same step.
  const std::string stopped = dir / "stopped";
  ++port;
  auto rank = [&](int r) {
    return "WORLD_SIZE=2 RANK=" + std::to_string(r) + " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) +
           " " + DIFFUSE_BINARY +
           " --threads 1 train --data mnist --limit 32 --model tiny --batch-size 4 --timesteps 50 "
           "--preview-every 0 --no-progress --log-every 1 --steps 100000 --out " +
           stopped;
  };
  const std::string script = rank(0) + " > " + dir / "r0.txt" + " 2>&1 & p0=$!; " + rank(1) + " > " + dir / "r1.txt" +
                             " 2>&1 & p1=$!; for i in $(seq 1200); do [ -f " + stopped +
                             "/log.csv ] && break; "
                             "sleep 0.1; done; kill -TERM $p1; wait $p0; s0=$?; wait $p1; echo $s0 $?";
  const auto statuses = diffuse::testing::run_command(script);
  EXPECT_EQ(statuses.output, "143 143\n") << diffuse::read_file(dir / "r0.txt") << diffuse::read_file(dir / "r1.txt");
  const auto main_state = diffuse::load_safetensors(stopped + "/train_state.safetensors");
  const auto rank1_state = diffuse::load_safetensors(stopped + "/train_state.rank1.safetensors");
  EXPECT_EQ(main_state.metadata.at("step"), rank1_state.metadata.at("step"));
  EXPECT_NE(diffuse::read_file(dir / "r0.txt").find("interrupted at step"), std::string::npos);
}

TEST(Cli, TrainThenSampleEndToEnd) {
  TempDir dir;
  auto r = run("--threads 1 train --data mnist --limit 32 --model tiny --steps 3 --batch-size 4 --timesteps 50 "
               "--preview-n 4 --no-progress --out " + dir / "run");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string ckpt = dir / "run/checkpoint.safetensors";
  r = run("sample --checkpoint " + ckpt + " --sampler ddpm --n 3 --seed 5 --no-progress --out " + dir / "a.png" +
          " --out-dir " + dir / "imgs" + " --trajectory " + dir / "traj.png");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("sample --checkpoint " + ckpt + " --sampler ddpm --n 3 --seed 5 --no-progress --no-cuda-graph --out " +
          dir / "b.png");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(diffuse::read_file(dir / "a.png"), diffuse::read_file(dir / "b.png"));  // same seed, same bytes
  EXPECT_TRUE(std::filesystem::exists(dir / "imgs/000002.png"));
  EXPECT_TRUE(std::filesystem::exists(dir / "traj.png"));
  r = run("sample --checkpoint " + ckpt + " --n 3 --steps 5 --scale 3 --no-progress --out " + dir / "big.png");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto small = diffuse::load_image_u8(dir / "a.png", 1, 0), big = diffuse::load_image_u8(dir / "big.png", 1, 0);
  EXPECT_EQ(big.size(2) - 2 - 2 * 2, 3 * (small.size(2) - 2 - 2 * 2));  // 2 per row, padding 2: only the images grow
  r = run("sample --checkpoint " + ckpt + " --sampler ddim --steps 100 --out " + dir / "c.png");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("exceeds the checkpoint's T = 50"), std::string::npos) << r.output;

  // eval --json prints one object with the documented bits_per_dim fields (stderr holds the progress bar).
  const std::string eval = std::string(DIFFUSE_BINARY) + " eval --checkpoint " + ckpt +
                           " --metric nll --n 6 --t-samples 2 --json --no-progress 2>/dev/null";
  FILE* pipe = popen(eval.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string json;
  char buf[256];
  while (fgets(buf, sizeof buf, pipe)) json += buf;
  EXPECT_EQ(pclose(pipe), 0);
  auto j = nlohmann::json::parse(json);
  const auto& bpd = j.at("bits_per_dim");
  EXPECT_NEAR(bpd.at("total").get<double>(),
              bpd.at("prior").get<double>() + bpd.at("terms").get<double>() + bpd.at("decoder").get<double>(), 1e-9);
  EXPECT_GT(j.at("stderr").at("total").get<double>(), 0.0);
  EXPECT_EQ(j.at("images").get<int>(), 6);
}

TEST(Cli, TrainReshapesTheNetworkAndTrainsVWithMinSnr) {
  TempDir dir;
  auto r = run(
      "--threads 1 train --data mnist --limit 16 --model tiny --channels 12 --channel-mult 1,1 --res-blocks 2 "
      "--attention-res 0 --objective v --min-snr-gamma 5 --t-sampling log-snr-normal --log-snr-mean 1 "
      "--adam-beta2 0.99 --steps 2 --batch-size 4 --timesteps 50 --preview-every 0 --preview-n 2 --no-progress --out " +
      dir / "run");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto settings =
      nlohmann::json::parse(diffuse::load_safetensors_metadata(dir / "run/train_state.safetensors").at("train"));
  EXPECT_EQ(settings.at("t-sampling"), "log-snr-normal");
  EXPECT_EQ(settings.at("log-snr-mean"), 1.0);
  EXPECT_EQ(settings.at("adam-beta2"), 0.99);
  const auto info = diffuse::checkpoint_info_from_metadata(
      diffuse::load_safetensors_metadata(dir / "run/checkpoint.safetensors"), "checkpoint");
  EXPECT_EQ(info.model.channels, 12);
  EXPECT_EQ(info.model.channel_mult, (std::vector<int64_t>{1, 1}));
  EXPECT_EQ(info.model.num_res_blocks, 2);
  EXPECT_TRUE(info.model.attention_resolutions.empty());
  EXPECT_EQ(info.objective, diffuse::Objective::v);
  // a shape the network cannot take names the field and the rule
  r = run("train --data mnist --limit 16 --model tiny --channels 10 --steps 1 --out " + dir / "bad");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("norm_groups"), std::string::npos) << r.output;
  // resuming with another shape is refused
  r = run("train --data mnist --limit 16 --model tiny --channels 16 --steps 4 --resume --out " + dir / "run");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("stay as they began"), std::string::npos) << r.output;
}

TEST(Cli, EmaSnapshotsRebuildAnEmaOfAnyWidthThatSamples) {
  TempDir dir;
  const std::string out = dir / "run";
  auto r =
      run("--threads 1 train --data mnist --limit 16 --model tiny --steps 4 --batch-size 4 --timesteps 50 "
          "--ema-sigma-rel 0.1 --ema-snapshot-every 2 --preview-every 0 --preview-n 2 --no-progress --out " +
          out);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(out + "/ema_snapshots/sigma_rel_0.050_step_0000002.safetensors"));
  EXPECT_TRUE(std::filesystem::exists(out + "/ema_snapshots/sigma_rel_0.100_step_0000004.safetensors"));
  const auto settings =
      nlohmann::json::parse(diffuse::load_safetensors_metadata(out + "/train_state.safetensors").at("train"));
  EXPECT_EQ(settings.at("ema-sigma-rel"), 0.1);
  EXPECT_EQ(settings.at("ema-snapshot-every"), 2);

  r = run("ema --run " + out + " --sigma-rel 0.05,0.08");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("from 4 snapshots, profile error"), std::string::npos) << r.output;
  const auto rebuilt = diffuse::load_safetensors_metadata(out + "/checkpoint_ema_0.080.safetensors");
  EXPECT_EQ(rebuilt.at("step"), "4");
  r = run("sample --checkpoint " + out + "/checkpoint_ema_0.080.safetensors --n 2 --steps 5 --no-progress --out " +
          dir / "rebuilt.png");
  EXPECT_EQ(r.status, 0) << r.output;
  // the EMA as it was at step 2, written elsewhere; nothing before step 2; a run without snapshots
  r = run("ema --run " + out + " --sigma-rel 0.1 --step 2 --out-dir " + dir / "at2");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(diffuse::load_safetensors_metadata(dir / "at2/checkpoint_ema_0.100.safetensors").at("step"), "2");
  r = run("ema --run " + out + " --sigma-rel 0.1 --step 1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("step 1 or earlier"), std::string::npos) << r.output;
  r = run("ema --run " + dir.str() + " --sigma-rel 0.1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--ema-snapshot-every"), std::string::npos) << r.output;
  r = run("ema --run " + out + " --sigma-rel 0.1,0.1001");  // both would be checkpoint_ema_0.100
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("two widths are written as 'checkpoint_ema_0.100.safetensors'"), std::string::npos)
      << r.output;
  r = run("ema --run " + out + " --sigma-rel 0.5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("must be a number in (0, 0.2886]"), std::string::npos) << r.output;
}

// SIGTERM (timeout, Slurm, systemd, docker) takes the same path as Ctrl-C (SIGINT) and SIGHUP.
TEST(Cli, SigtermWritesACheckpointAndResumeContinues) {
  TempDir dir;
  const std::string run_dir = dir / "run";
  const std::string train = std::string(DIFFUSE_BINARY) +
                            " --threads 1 train --data mnist --limit 64 --model tiny --batch-size 4 --timesteps 50"
                            " --preview-n 2 --no-progress --out " + run_dir;
  // Start a long run, interrupt it once it has logged a step (so its handler is in place), and
  // collect its exit status. The wait for log.csv is long (up to 120 s): with 10 s, this test
  // failed once in a loaded full run, most likely interrupting the run before its first step.
  const std::string script = train + " --steps 100000 --log-every 1 > " + dir / "out.txt" + " 2>&1 & pid=$!; " +
                             "for i in $(seq 1200); do [ -f " + run_dir + "/log.csv ] && break; sleep 0.1; done; " +
                             "kill -TERM $pid; wait $pid; echo $?";
  FILE* pipe = popen(script.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  char buf[64] = {0};
  ASSERT_NE(fgets(buf, sizeof buf, pipe), nullptr);
  pclose(pipe);
  EXPECT_EQ(std::string(buf), "143\n") << diffuse::read_file(dir / "out.txt");  // 128 + SIGTERM
  const std::string out = diffuse::read_file(dir / "out.txt");
  EXPECT_NE(out.find("interrupted at step"), std::string::npos) << out;
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;
  ASSERT_TRUE(std::filesystem::exists(run_dir + "/checkpoint.safetensors"));

  // A flag that would change the model is refused; one that changes training is said.
  auto r = run("--threads 1 train --data mnist --limit 64 --model tiny --timesteps 100 --resume --steps 400 --out " +
               run_dir);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--timesteps 100: the run in"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("has T = 50"), std::string::npos) << r.output;

  // Resuming continues from the saved step to the new target.
  r =
      run("--threads 1 train --data mnist --limit 64 --model tiny --batch-size 4 --timesteps 50 --preview-n 2 "
          "--no-progress --resume --steps 400 --lr 0.0005 --log-every 1 --out " +
          run_dir);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resume: --lr 0.0005 (was 0.001)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("finished at step 400"), std::string::npos) << r.output;
  // every step is logged once, the rows written after the saved step dropped on resume
  std::istringstream log(diffuse::read_file(run_dir + "/log.csv"));
  std::string line;
  std::getline(log, line);
  int64_t previous = 0;
  while (std::getline(log, line)) {
    const int64_t step = std::stoll(line);
    EXPECT_GT(step, previous) << line;
    previous = step;
  }
  EXPECT_EQ(previous, 400);
}

TEST(Cli, TextConditionalTrainingSamplingAndItsRefusals) {
  TempDir dir;
  auto refused = [&](const std::string& command, const std::string& message) {
    const auto r = run(command);
    EXPECT_NE(r.status, 0) << command;
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
  };
  const std::string train = "--threads 1 train --model tiny --batch-size 8 --timesteps 50 --preview-n 4 --no-progress ";
  // captioned data is trained text-conditional by default
  auto r = run(train + "--data captioned-digits --limit 64 --steps 2 --out " + dir / "text");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(text-conditional)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tokenizer:"), std::string::npos) << r.output;
  const std::string text = dir / "text/checkpoint.safetensors";
  r = run("sample --checkpoint " + text +
          " --prompt \"3 left of 8\" --prompt \"a small 5 above a 1\" "
          "--negative-prompt \"8 left of 3\" --guidance 2 --steps 3 --n 4 --no-progress --out " +
          dir / "p.png");
  EXPECT_EQ(r.status, 0) << r.output;
  refused("sample --checkpoint " + text + " --prompt \"a cat\" --n 2 --no-progress --out " + dir / "x.png",
          "'cat' is not in this model's vocabulary");
  r = run("eval --metric nll --n 4 --t-samples 2 --no-progress --checkpoint " + text);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("conditional on each image's caption"), std::string::npos) << r.output;
  // --no-text-cond trains without text; --text-cond without captions is refused
  r = run(train + "--data captioned-digits --limit 64 --steps 1 --no-text-cond --out " + dir / "plain");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("text-conditional"), std::string::npos) << r.output;
  refused("sample --checkpoint " + dir / "plain/checkpoint.safetensors" + " --prompt 3 --n 2 --no-progress --out " +
              dir / "x.png",
          "not text-conditional");
  refused(train + "--data mnist --limit 32 --steps 1 --text-cond --out " + dir / "none", "--text-cond needs captions");
  // a resumed run keeps its kind of condition
  refused(train + "--data captioned-digits --limit 64 --steps 3 --no-text-cond --resume --out " + dir / "text",
          "--no-text-cond: the run");
}

TEST(Cli, ImageConditionalTrainingInpaintingUpscalingAndTheirRefusals) {
  TempDir dir;
  auto refused = [&](const std::string& command, const std::string& message) {
    const auto r = run(command);
    EXPECT_NE(r.status, 0) << command;
    EXPECT_NE(r.output.find(message), std::string::npos) << r.output;
  };
  const std::string train =
      "--threads 1 train --data mnist --limit 32 --model tiny --batch-size 8 --timesteps 50 --preview-n 4 "
      "--no-progress ";
  auto r = run(train + "--steps 2 --image-cond inpaint --out " + dir / "inpaint");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(inpaint)"), std::string::npos) << r.output;
  const std::string inpaint = dir / "inpaint/checkpoint.safetensors";
  r = run("edit inpaint --checkpoint " + inpaint + " --test-index 0-1 --mask center --guidance 1 --steps 3 " +
          "--no-progress --out " + dir / "inpaint.png");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("the inpainting model, guidance 1.00: 2 image(s), mean PSNR inside the hole"),
            std::string::npos)
      << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "inpaint.png"));
  r = run(train + "--steps 2 --image-cond super-resolution --out " + dir / "sr");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string sr = dir / "sr/checkpoint.safetensors";
  diffuse::save_image_png(dir / "low.png", torch::zeros({1, 7, 7}));
  r = run("edit upscale --checkpoint " + sr + " --test-index 0 --low-res " + dir / "low.png" +
          " --steps 3 --no-progress --out " + dir / "up.png");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("×4 super-resolution of 1 image(s): mean PSNR bicubic"), std::string::npos) << r.output;
  // a condition the model was not trained for, a low-resolution file of the wrong size, a second condition
  refused("edit upscale --checkpoint " + inpaint + " --test-index 0 --no-progress", "is no super-resolution model");
  refused("edit inpaint --checkpoint " + sr + " --test-index 0 --mask left --no-progress",
          "was trained for super-resolution");
  refused("edit upscale --checkpoint " + sr + " --low-res " + dir / "inpaint.png" + " --no-progress",
          "this model upscales 7×7 images ×4");
  refused(train + "--steps 1 --image-cond inpaint --class-cond --out " + dir / "x", "one kind of condition");
  refused(train + "--steps 1 --image-cond super-resolution --sr-factor 3 --out " + dir / "x",
          "must be at least 2 and divide the image size 28");
  refused(train + "--steps 3 --image-cond super-resolution --resume --out " + dir / "inpaint",
          "--image-cond super-resolution: the run");
  // the cFID of an inpainting model's results, and of its samples under the reference's own conditions
  write_small_idx(dir / "idx");
  const std::string cache = "DIFFUSE_CACHE_DIR=" + dir / "cache" + " ";
  r = run("--threads 1 train --data " + dir / "idx" + " --model tiny --batch-size 8 --timesteps 50 --preview-n 4 " +
          "--no-progress --steps 2 --image-cond inpaint --out " + dir / "idx-inpaint");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string idx_inpaint = dir / "idx-inpaint/checkpoint.safetensors";
  r = diffuse::testing::run_command(cache + DIFFUSE_BINARY + " edit inpaint --checkpoint " + idx_inpaint +
                                    " --test-index 0-19 --mask right --steps 3 --cfid --no-progress");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("cFID of the results: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(20 real training images: "), std::string::npos) << r.output;
  r = diffuse::testing::run_command(cache + DIFFUSE_BINARY + " eval --metric fid --n 20 --steps 3 --guidance 1 " +
                                    "--no-progress --checkpoint " + idx_inpaint);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("real images: 20 of the training split score"), std::string::npos) << r.output;
}

TEST(Cli, ClassConditionalGuidanceAndEditing) {
  TempDir dir;
  auto r = run("--threads 1 train --data mnist --limit 32 --model tiny --steps 2 --batch-size 4 --timesteps 50 "
               "--class-cond --preview-n 4 --no-progress --out " + dir / "cond");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("(class-conditional)"), std::string::npos) << r.output;
  const std::string cond = dir / "cond/checkpoint.safetensors";
  r = run("sample --checkpoint " + cond + " --class 3 --guidance 2 --sampler dpm++2m --steps 5 --n 2 --no-progress --out " +
          dir / "three.png");
  EXPECT_EQ(r.status, 0) << r.output;
  r = run("sample --checkpoint " + cond + " --sampler heun --steps 4 --n 10 --no-progress --out " + dir / "rows.png");
  EXPECT_EQ(r.status, 0) << r.output;
  for (const std::string bad : {"--class 10", "--class seven", "--class none --guidance 1"}) {
    r = run("sample --checkpoint " + cond + " " + bad + " --n 2 --no-progress --out " + dir / "x.png");
    EXPECT_NE(r.status, 0) << bad;
    EXPECT_NE(r.output.find("--"), std::string::npos) << r.output;
  }

  r = run("--threads 1 train --data mnist --limit 32 --model tiny --steps 2 --batch-size 4 --timesteps 50 "
          "--preview-n 4 --no-progress --out " + dir / "plain");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string plain = dir / "plain/checkpoint.safetensors";
  r = run("sample --checkpoint " + plain + " --class 3 --n 2 --no-progress --out " + dir / "x.png");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("not class-conditional"), std::string::npos) << r.output;
  r = run("eval --metric fid --guidance 2 --n 4 --checkpoint " + plain);
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--guidance needs a class-, text- or image-conditional checkpoint"), std::string::npos)
      << r.output;
  r = run("sample --checkpoint " + plain + " --sampler euler --eta 1 --n 2 --no-progress --out " + dir / "x.png");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--eta applies to --sampler ddim only"), std::string::npos) << r.output;

  // cFID on a small IDX data set of random digits-sized images (the classifier trains in seconds),
  // class-balanced and guided for the class-conditional checkpoint.
  write_small_idx(dir / "idx");
  const std::string fid = "DIFFUSE_CACHE_DIR=" + dir / "cache" + " " + std::string(DIFFUSE_BINARY) +
                          " eval --metric fid --data " + dir / "idx" + " --n 20 --steps 3 --no-progress --json";
  FILE* pipe = popen((fid + " --checkpoint " + cond + " --guidance 1 2>/dev/null").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string json;
  char buf[256];
  while (fgets(buf, sizeof buf, pipe)) json += buf;
  EXPECT_EQ(pclose(pipe), 0) << json;
  auto j = nlohmann::json::parse(json);
  EXPECT_GE(j.at("cfid").get<double>(), 0.0);
  // the floor: 20 real training images (these splits hold the same images) lie nearer the reference
  EXPECT_GE(j.at("cfid_real").get<double>(), 0.0);
  EXPECT_LT(j.at("cfid_real").get<double>(), j.at("cfid").get<double>()) << json;
  EXPECT_EQ(j.at("images").get<int>(), 20);
  EXPECT_NE(j.at("sampler").get<std::string>().find("guidance 1"), std::string::npos) << json;
  EXPECT_TRUE(std::filesystem::exists(dir / "cache"));  // the classifier was cached

  // Editing: each mode runs on held-out images and writes its figure.
  const std::string ck = " --checkpoint " + plain + " --steps 5";
  for (const std::string mode :
       {"sdedit --test-index 0,1 --t 20", "sdedit --test-index 0 --strength 0.5", "sweep --test-index 0-1 --ts 5,25,50",
        "invert --test-index 0 --steps-list 5,10", "inpaint --test-index 0 --mask left --resample 1",
        "interpolate --test-index 0,1 --frames 3", "mix --test-index 0,1 --ts 25 --frames 3"}) {
    std::filesystem::remove(dir / "edit.png");
    r = run("edit " + mode + ck + " --out " + dir / "edit.png");
    EXPECT_EQ(r.status, 0) << mode << "\n" << r.output;
    EXPECT_TRUE(std::filesystem::exists(dir / "edit.png")) << mode;
    // the progress bar counts the network's evaluations and ends at its total
    const auto mode_name = mode.substr(0, mode.find(' '));
    const auto last_line = r.output.rfind(mode_name + " [########################]");
    EXPECT_NE(last_line, std::string::npos) << r.output;
    EXPECT_NE(r.output.find("100.0%", last_line), std::string::npos) << r.output;
  }
  r = run("edit sweep --test-index 0 --ts 5,25 --no-progress --checkpoint " + plain);
  EXPECT_NE(r.output.find("PSNR"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("sweep ["), std::string::npos) << r.output;

  // Bad input: t out of range, wrong mask size, wrong channels, no image.
  diffuse::save_image_png(dir / "rgb.png", torch::zeros({3, 28, 28}));
  diffuse::save_image_png(dir / "mask.png", torch::zeros({1, 10, 10}));
  const std::vector<std::pair<std::string, std::string>> bad{
      {"sdedit --test-index 0 --t 51", "beyond the checkpoint's T = 50"},
      {"sdedit --test-index 0", "exactly one of --t"},
      {"sweep --test-index 0 --ts 0", "outside [1, 50]"},
      {"inpaint --test-index 0 --mask " + dir / "mask.png", "is 10×10, but the image is 28×28"},
      {"sdedit --t 5 --image " + dir / "rgb.png", "has 3 colour channel(s), but the model expects 1"},
      {"sdedit --t 5", "needs 1 input image(s)"},
      {"interpolate --test-index 0", "needs 2 input image(s)"},
      {"sdedit --t 5 --test-index 10000000", "--test-index 10000000"}};
  for (const auto& [args, message] : bad) {
    r = run("edit " + args + " --checkpoint " + plain + " --out " + dir / "bad.png");
    EXPECT_NE(r.status, 0) << args;
    EXPECT_NE(r.output.find(message), std::string::npos) << args << "\n" << r.output;
    EXPECT_FALSE(std::filesystem::exists(dir / "bad.png")) << args;
  }
}

TEST(Cli, ShowDrawsTheScheduleAndTheForwardProcess) {
  if (!DIFFUSE_HAVE_CAIRO) GTEST_SKIP() << "built without cairo";
  TempDir dir;
  auto r = run("show schedule --out " + dir / "schedule.png");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "schedule.png"));
  r = run("show forward --test-index 0,5 --ts 0,10,100 --schedule cosine --out " + dir / "forward.png");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(dir / "forward.png"));
  r = run("show forward --ts 1001 --out " + dir / "bad.png");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--ts: 1001 outside [0, T]"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "bad.png"));
  r = run("show");
  EXPECT_NE(r.status, 0);
}
