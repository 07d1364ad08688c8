// The whole path on a tiny model: train a few steps on real MNIST images, checkpoint, sample;
// and resuming gives the same weights as never stopping.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>

#include "diffuse/io/safetensors.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/train_step.h"
#include "diffuse/train/trainer.h"
#include "support/error_of.h"
#include "support/small_training.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::quick_config;
using diffuse::testing::TempDir;
using diffuse::testing::tiny_info;

TEST(Train, TinyModelTrainsCheckpointsAndSamples) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 64});
  auto result = train(quick_config(dir.str(), 6), tiny_info(data), data, torch::kCPU);
  EXPECT_EQ(result.step, 6);
  EXPECT_TRUE(std::isfinite(result.loss));
  EXPECT_GT(result.loss, 0.0);
  for (const char* f : {"checkpoint.safetensors", "train_state.safetensors", "log.csv", "preview_000006.png"})
    EXPECT_TRUE(std::filesystem::exists(dir / f)) << f;

  auto ckpt = load_checkpoint(dir / "checkpoint.safetensors", torch::kCPU);
  EXPECT_EQ(ckpt.info.step, 6);
  GaussianDiffusion diffusion(NoiseSchedule(ckpt.info.schedule), ckpt.info.objective, torch::kCPU);
  auto sampler = make_sampler(SamplerConfig{"ddim"}, diffusion.schedule());
  Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) { return ckpt.model->forward(x, t); };
  auto gen = at::detail::createCPUGenerator(0);
  auto x = sample_loop(diffusion, *sampler, net, torch::randn({2, 1, 28, 28}, gen), SampleOptions{10, true}, gen);
  EXPECT_EQ(x.sizes(), (std::vector<int64_t>{2, 1, 28, 28}));
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());

  // A second run into the same directory without --resume must refuse, not overwrite.
  EXPECT_THROW(train(quick_config(dir.str(), 6), tiny_info(data), data, torch::kCPU), std::runtime_error);
}

TEST(Train, ResumingGivesTheSameWeightsAsNotStopping) {
  TempDir straight, stopped;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 40});  // 40/8: crosses an epoch boundary
  train(quick_config(straight.str(), 8), tiny_info(data), data, torch::kCPU);
  train(quick_config(stopped.str(), 3), tiny_info(data), data, torch::kCPU);
  auto resume = quick_config(stopped.str(), 8);
  resume.resume = true;
  resume.seed = 999;  // ignored on resume: the RNG state comes from the saved run
  auto result = train(resume, tiny_info(data), data, torch::kCPU);
  EXPECT_EQ(result.step, 8);

  auto a = load_safetensors(straight / "train_state.safetensors");
  auto b = load_safetensors(stopped / "train_state.safetensors");
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  double worst = 0.0;
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    ASSERT_EQ(a.tensors[i].first, b.tensors[i].first);
    if (a.tensors[i].second.is_floating_point())
      worst = std::max(worst, (a.tensors[i].second - b.tensors[i].second).abs().max().item<double>());
    else
      EXPECT_TRUE(a.tensors[i].second.equal(b.tensors[i].second)) << a.tensors[i].first;
  }
  std::printf("max |straight - resumed| over weights, EMA and moments: %.3g\n", worst);
  EXPECT_LE(worst, 1e-6);
}

TEST(Train, ADamagedTrainStateIsRefusedNamingWhatIsWrong) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 16});
  train(quick_config(dir.str(), 2), tiny_info(data), data, torch::kCPU);
  const std::string path = dir / "train_state.safetensors";
  const auto good = load_safetensors(path);
  // The error of resuming on `d` (empty if none).
  auto resume_error = [&](const Dataset& d) {
    auto cfg = quick_config(dir.str(), 4);
    cfg.resume = true;
    return error_of([&] { train(cfg, tiny_info(d), d, torch::kCPU); });
  };
  // Writes the state with one change and returns the error of resuming from it.
  auto resume_after = [&](const std::function<void(std::vector<std::pair<std::string, torch::Tensor>>&,
                                                   std::map<std::string, std::string>&)>& damage) {
    auto tensors = good.tensors;
    for (auto& named : tensors) named.second = named.second.clone();  // damage a copy, not `good`
    auto metadata = good.metadata;
    damage(tensors, metadata);
    save_safetensors(path, tensors, metadata);
    return resume_error(data);
  };
  auto tensor = [](std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                   const std::string& name) -> torch::Tensor& {
    for (auto& [n, t] : tensors)
      if (n == name) return t;
    throw std::logic_error("no " + name);
  };
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;
  using Metadata = std::map<std::string, std::string>;
  EXPECT_NE(resume_after([](Tensors&, Metadata& m) { m["adam_step"] = "-1"; }).find("'adam_step' = '-1'"),
            std::string::npos);
  EXPECT_NE(resume_after([](Tensors&, Metadata& m) { m["step"] = "5abc"; }).find("'step' = '5abc'"), std::string::npos);
  EXPECT_NE(resume_after([&](Tensors& t, Metadata&) {
              tensor(t, "adam_v/0") = -tensor(t, "adam_v/0") - 1;
            }).find("negative entries"),
            std::string::npos);
  EXPECT_NE(resume_after([&](Tensors& t, Metadata&) {
              tensor(t, "adam_m/0") = torch::zeros({1});
            }).find("adam_m/0' is Float [1]"),
            std::string::npos);
  EXPECT_NE(resume_after([&](Tensors& t, Metadata&) {
              tensor(t, "model/conv_in.weight").fill_(NAN);
            }).find("'model/conv_in.weight' holds NaN or Inf"),
            std::string::npos);
  EXPECT_NE(resume_after([&](Tensors& t, Metadata&) {
              tensor(t, "ema/conv_in.weight") = tensor(t, "ema/conv_in.weight").to(torch::kInt32);
            }).find("not floating-point"),
            std::string::npos);
  EXPECT_NE(resume_after([&](Tensors& t, Metadata&) { tensor(t, "loader/order").zero_(); }).find("not a permutation"),
            std::string::npos);
  EXPECT_NE(resume_after([](Tensors&, Metadata& m) { m["loader_cursor"] = "17"; }).find("beyond the 16 images"),
            std::string::npos);
  // another data set of the same shape
  save_safetensors(path, good.tensors, good.metadata);
  auto other = data;
  other.name = "fashion-mnist";
  const auto error = resume_error(other);
  EXPECT_NE(error.find("trains on 'mnist', not 'fashion-mnist'"), std::string::npos) << error;
}

// After one step from the same weights and batch, m = (1 − β₁) g and v = (1 − β₂) g²: the saved
// moments of two runs differ by exactly those factors. Adam's bias correction divides by 1 − βᵏ,
// so β = 1 (or NaN) is refused before any work.
TEST(Train, AdamBetasReachTheMomentsAndOutsideZeroToOneAreRefused) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 16});
  std::map<double, SafetensorsContent> states;
  for (const double beta : {0.999, 0.5}) {
    auto cfg = quick_config(dir / std::to_string(beta), 1);
    cfg.adam_beta1 = beta == 0.5 ? 0.8 : 0.9;
    cfg.adam_beta2 = beta;
    train(cfg, tiny_info(data), data, torch::kCPU);
    states.emplace(beta, load_safetensors(cfg.out_dir + "/train_state.safetensors"));
  }
  const auto& a = states.at(0.999);
  const auto& b = states.at(0.5);
  int moved = 0;  // moments of parameters that got a gradient (the zero-initialised output layer's get all of it)
  for (const auto& [name, ta] : a.tensors) {
    if (name.rfind("adam_", 0) != 0) continue;
    const double factor = name[5] == 'm' ? (1 - 0.8) / (1 - 0.9) : (1 - 0.5) / (1 - 0.999);
    // rtol: the update runs in float32, where 1 − 0.999f is 1.3e-5 away from 0.001
    EXPECT_TRUE(torch::allclose(b.at(name), ta * factor, 1e-4, 1e-30)) << name;
    moved += ta.abs().max().item<double>() > 0.0;
  }
  EXPECT_GE(moved, 2);
  for (const double beta : {1.0, -0.5, std::nan("")}) {
    auto cfg = quick_config(dir.str(), 2);
    cfg.adam_beta2 = beta;
    EXPECT_NE(error_of([&] { train(cfg, tiny_info(data), data, torch::kCPU); }).find("adam_beta2 must be in [0, 1)"),
              std::string::npos)
        << beta;
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "checkpoint.safetensors"));
}

TEST(Train, ResumeWithoutStateAndWrongImageSizeAreErrors) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 16});
  auto cfg = quick_config(dir.str(), 2);
  cfg.resume = true;
  EXPECT_THROW(train(cfg, tiny_info(data), data, torch::kCPU), std::runtime_error);
  auto big_batch = quick_config(dir.str(), 2);
  big_batch.batch_size = 17;  // more than the 16 images
  EXPECT_NE(error_of([&] { train(big_batch, tiny_info(data), data, torch::kCPU); }).find("--batch-size 17 is larger"),
            std::string::npos);
  auto info = tiny_info(data);
  info.data.image_size = 32;
  EXPECT_THROW(train(quick_config(dir.str(), 2), info, data, torch::kCPU), std::runtime_error);
}

TEST(AdamW, MatchesTheUpdateWrittenOutByHand) {
  // One parameter, two steps, compared with the formulas in float64.
  auto p = torch::tensor({1.0, -2.0}, torch::dtype(torch::kFloat64).requires_grad(true));
  AdamW opt({p}, AdamWOptions{0.9, 0.99, 1e-8, 0.1});
  double m[2] = {0, 0}, v[2] = {0, 0}, theta[2] = {1.0, -2.0};
  const double lr = 0.01;
  for (int k = 1; k <= 2; ++k) {
    opt.zero_grad();
    (p * p * p).sum().backward();  // g = 3θ²
    opt.step(lr);
    for (int i = 0; i < 2; ++i) {
      const double g = 3 * theta[i] * theta[i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.99 * v[i] + 0.01 * g * g;
      theta[i] -= lr * 0.1 * theta[i];
      theta[i] -= lr * (m[i] / (1 - std::pow(0.9, k))) / (std::sqrt(v[i] / (1 - std::pow(0.99, k))) + 1e-8);
    }
  }
  EXPECT_NEAR(p[0].item<double>(), theta[0], 1e-12);
  EXPECT_NEAR(p[1].item<double>(), theta[1], 1e-12);
}

TEST(AdamW, OnePassFloat32UpdateMatchesTheMultiTensorUpdateInFloat64) {
  // float32 CPU parameters (one NCHW, one channels-last, one vector, one matrix of several
  // chunks of the parallel loop) take the one-pass loop; the same parameters in float64 take the
  // multi-tensor kernels. Three steps with different gradient scales, then θ, m, v and an EMA of
  // θ agree to float32 rounding.
  torch::manual_seed(0);
  std::vector<torch::Tensor> p32{torch::randn({4, 3, 3, 3}), torch::randn({5, 6, 3, 3}).contiguous(c10::MemoryFormat::ChannelsLast),
                                 torch::randn({7}), torch::randn({3, 20000})};
  std::vector<torch::Tensor> p64;
  for (auto& p : p32) p64.push_back(p.to(torch::kFloat64));
  torch::nn::ParameterList m32, m64, e32, e64;  // the "models" the EMA averages
  for (size_t i = 0; i < p32.size(); ++i) {
    p32[i].requires_grad_();
    p64[i].requires_grad_();
    m32->append(p32[i]);
    m64->append(p64[i]);
    e32->append(p32[i].detach().clone());
    e64->append(p64[i].detach().clone());
  }
  const AdamWOptions options{0.9, 0.99, 1e-8, 0.05};
  AdamW opt32(p32, options), opt64(p64, options);
  Ema ema32(0.9), ema64(0.9);
  for (int k = 0; k < 3; ++k) {
    for (size_t i = 0; i < p32.size(); ++i) {
      auto g = torch::randn(p32[i].sizes());
      p32[i].mutable_grad() = g.contiguous(p32[i].suggest_memory_format());
      p64[i].mutable_grad() = g.to(torch::kFloat64);
    }
    const double grad_scale = 1.0 / (1 + k);
    opt32.step(0.01, grad_scale);
    opt64.step(0.01, grad_scale);
    ema32.update(*e32, *m32);
    ema64.update(*e64, *m64);
  }
  for (size_t i = 0; i < p32.size(); ++i) {
    EXPECT_TRUE(torch::allclose(p32[i].to(torch::kFloat64), p64[i], 1e-5, 1e-6)) << i;
    EXPECT_TRUE(torch::allclose(opt32.first_moments()[i].to(torch::kFloat64), opt64.first_moments()[i], 1e-5, 1e-6)) << i;
    EXPECT_TRUE(torch::allclose(opt32.second_moments()[i].to(torch::kFloat64), opt64.second_moments()[i], 1e-5, 1e-7)) << i;
    EXPECT_TRUE(torch::allclose(e32->parameters()[i].to(torch::kFloat64), e64->parameters()[i], 1e-5, 1e-6)) << i;
  }
  EXPECT_TRUE(p32[1].is_contiguous(c10::MemoryFormat::ChannelsLast));  // updated in place, layout kept
}

TEST(TrainStep, ClippingFoldedIntoAdamWMatchesScalingTheGradients) {
  // A float32 CPU step reads ‖g‖ in one pass and hands min(1, c/‖g‖) to AdamW. The same steps with
  // the gradients clipped by clip_grad_norm in the hook (so that the folded scale is 1 to within
  // 1e-6/c) must end at the same weights; without clipping they must not.
  auto run = [](bool clip_in_hook, double clip) {
    torch::manual_seed(0);
    auto config = unet_config_by_name("tiny", 1, 12);
    UNet model(config), ema_model(config);
    GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU);
    AdamW optimizer(model->parameters(), AdamWOptions{});
    Ema ema(0.99);
    TrainStepOptions options;
    options.grad_clip = clip;
    TrainStep step(model, ema_model, diffusion, optimizer, ema, options);
    if (clip_in_hook) step.set_gradient_hook([](const std::vector<torch::Tensor>& p) { clip_grad_norm(p, 0.05); });
    auto x0 = torch::rand({8, 1, 12, 12}) * 2 - 1;
    for (int i = 0; i < 4; ++i) step(x0, torch::Tensor(), 1e-2);
    std::vector<torch::Tensor> flat;
    for (auto& p : model->parameters()) flat.push_back(p.detach().flatten().clone());
    return torch::cat(flat);
  };
  const auto folded = run(false, 0.05), in_hook = run(true, 0.05), unclipped = run(false, 0);
  const double scale = in_hook.norm().item<double>();
  EXPECT_LT((folded - in_hook).norm().item<double>(), 1e-5 * scale);
  EXPECT_GT((folded - unclipped).norm().item<double>(), 1e-3 * scale);
}

TEST(LearningRate, WarmsUpLinearlyThenFollowsAHalfCosineToZero) {
  TrainConfig c;
  c.lr = 1e-3;
  c.warmup = 10;
  c.steps = 110;
  EXPECT_NEAR(learning_rate(c, 0), 1e-4, 1e-15);
  EXPECT_NEAR(learning_rate(c, 9), 1e-3, 1e-15);
  EXPECT_NEAR(learning_rate(c, 10), 1e-3, 1e-15);            // p = 0
  EXPECT_NEAR(learning_rate(c, 60), 0.5e-3, 1e-15);          // p = ½: cos(π/2) = 0
  EXPECT_NEAR(learning_rate(c, 85), 1e-3 * 0.5 * (1 + std::cos(M_PI * 0.75)), 1e-15);
  EXPECT_NEAR(learning_rate(c, 110), 0.0, 1e-15);
  c.cosine_decay = false;
  EXPECT_NEAR(learning_rate(c, 100), 1e-3, 1e-15);
}

TEST(FittedSteps, FillNinetySevenPercentOfTheTimeLeftInWholeTens) {
  // 10 minutes, fitted at step 50 after 8 s at 0.2 s a step: 50 + ⌊0.97 · 592 / 0.2⌋ = 2921 → 2920
  EXPECT_EQ(fitted_steps(10.0, 50, 8.0, 0.2, 5000), 2920);
  EXPECT_EQ(fitted_steps(10.0, 50, 8.0, 0.01, 5000), 5000);  // no more than the most
  EXPECT_EQ(fitted_steps(0.1, 50, 10.0, 0.1, 5000), 50);     // the budget already spent: stop here
  EXPECT_EQ(fitted_steps(0.01, 50, 0.0, 0.02, 5000), 79);    // 50 + ⌊0.97 · 0.6 / 0.02⌋, under a hundred as is
}

namespace {

// A run of `most` steps under a budget of `minutes`, each step taking seconds_per_step(step) on a
// simulated clock: the seconds it ends at, and how many fits changed its steps.
std::pair<double, int> simulated_run(double minutes, int64_t most,
                                     const std::function<double(int64_t)>& seconds_per_step, bool refits = true) {
  StepBudget budget(minutes, most, 0);
  int64_t steps = most;
  double elapsed = 0.0;
  int fits = 0;
  for (int64_t step = 1; step <= steps; ++step) {
    elapsed += seconds_per_step(step);
    const auto fit = budget.after_step(step, elapsed);
    if (fit && (refits || fits == 0)) steps = fit->steps, ++fits;
  }
  return {elapsed, fits};
}

}  // namespace

TEST(StepBudget, ARunWhoseSpeedChangesStillEndsNearItsBudget) {
  // ten minutes; the steps take 0.25 s while a neighbour is busy, then 0.15 s (it left), or the reverse
  using Speed = std::function<double(int64_t)>;
  const Speed left = [](int64_t step) { return step < 500 ? 0.25 : 0.15; };
  const Speed came = [](int64_t step) { return step < 500 ? 0.15 : 0.25; };
  for (const auto& [name, speed] : {std::pair{"the neighbour left", left}, std::pair{"a neighbour came", came}}) {
    SCOPED_TRACE(name);
    const auto [end, fits] = simulated_run(10.0, 100000, speed);
    EXPECT_GE(fits, 2);
    EXPECT_GT(end, 0.96 * 600.0);  // 97 % of what the last fit had left, in whole tens of steps
    EXPECT_LT(end, 1.0 * 600.0);
    // fitted once, at step 50, the same run ends far from the budget
    const auto [once, first_only] = simulated_run(10.0, 100000, speed, /*refits=*/false);
    EXPECT_EQ(first_only, 1);
    EXPECT_TRUE(once < 0.8 * 600.0 || once > 1.2 * 600.0) << once;
  }
  // a steady speed: the refits only take back most of the first fit's 3 % margin, as less is left to keep it for
  const auto [end, fits] = simulated_run(10.0, 100000, [](int64_t) { return 0.2; });
  EXPECT_GT(end, 0.96 * 600.0);
  EXPECT_LT(end, 600.0);
  const auto [once, first_only] = simulated_run(
      10.0, 100000, [](int64_t) { return 0.2; }, /*refits=*/false);
  EXPECT_LT(once, end);
  // no budget, or a run resumed after the first fit: never fitted
  EXPECT_FALSE(StepBudget(0.0, 100, 0).after_step(50, 10.0));
  StepBudget resumed(10.0, 5000, 60);
  for (int64_t step = 61; step < 2000; ++step) EXPECT_FALSE(resumed.after_step(step, 0.2 * (step - 60)));
}

TEST(StepBudget, ABriefLullBeforeTheLastFitDoesNotMakeTheRunOvershoot) {
  // 0.2 s a step, but 0.15 s while a neighbour pauses over the window that the last fit (eight
  // tenths, 480 s) times; the run goes back to 0.2 s after it. Fitted to that window alone, the
  // run would take 0.2/0.15 of what it planned for its last fifth and end past the budget.
  const auto lull = [](int64_t step) { return step >= 2150 && step < 2500 ? 0.15 : 0.2; };
  const auto [end, fits] = simulated_run(10.0, 100000, lull);
  EXPECT_GE(fits, 2);
  EXPECT_LE(end, 600.0);
  EXPECT_GT(end, 0.95 * 600.0);
}

TEST(Train, AMinutesBudgetFitsTheStepsAsItGoesAndTheScheduleEndsThere) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 64});
  auto config = quick_config(dir.str(), 100000);
  config.minutes = 0.25;  // fifteen seconds: the first steps time the kernels anew (no timing cache in ctest)
  config.batch_size = 2;
  config.log_every = 1;
  const auto result = train(config, tiny_info(data), data, torch::kCPU);
  EXPECT_GE(result.steps, 50);  // fitted at step 50 (50 itself where a busy machine spent the budget before)
  EXPECT_LT(result.steps, 100000);
  EXPECT_EQ(result.step, result.steps);
  // the train state keeps the fitted steps (what a resumed run continues to), and the learning
  // rate of the last step is the cosine schedule's for them
  const auto settings = nlohmann::json::parse(load_safetensors_metadata(dir / "train_state.safetensors").at("train"));
  EXPECT_EQ(settings.at("steps").get<int64_t>(), result.steps);
  std::ifstream log(dir / "log.csv");
  std::string line, last;
  while (std::getline(log, line)) last = line;
  auto fitted = config;
  fitted.steps = result.steps;
  const double last_lr = std::stod(last.substr(last.find(',', last.find(',') + 1) + 1));
  // (steps before the fit follow the schedule of the most steps: where the fit stopped the run at
  // once, its last step was one of them)
  if (result.steps > 50) EXPECT_NEAR(last_lr, learning_rate(fitted, result.steps - 1), 1e-9) << last;

  config.out_dir = dir / "b";
  for (double bad : {-1.0, std::nan("")}) {
    config.minutes = bad;
    EXPECT_NE(error_of([&] { train(config, tiny_info(data), data, torch::kCPU); }).find("minutes must be"),
              std::string::npos);
  }
}

TEST(Train, VlbLossTrainsToAFiniteLoss) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 32});
  auto cfg = quick_config(dir.str(), 3);
  cfg.loss = TrainLoss::vlb;
  auto result = train(cfg, tiny_info(data), data, torch::kCPU);
  EXPECT_TRUE(std::isfinite(result.loss));
  EXPECT_GT(result.loss, 0.0);
  EXPECT_THROW(train_loss_from_string("hybrid"), std::invalid_argument);
}

TEST(Train, VPredictionWithMinSnrTrainsAndIsKeptInTheCheckpoint) {
  TempDir dir;
  auto data = load_dataset("mnist", Split::train, DataOptions{0, 32});
  auto cfg = quick_config(dir.str(), 4);
  cfg.min_snr_gamma = 5.0;
  auto info = tiny_info(data);
  info.objective = Objective::v;
  auto result = train(cfg, info, data, torch::kCPU);
  EXPECT_TRUE(std::isfinite(result.loss));
  EXPECT_GT(result.loss, 0.0);
  EXPECT_EQ(load_checkpoint(dir / "checkpoint.safetensors", torch::kCPU).info.objective, Objective::v);
  const auto settings = nlohmann::json::parse(load_safetensors_metadata(dir / "train_state.safetensors").at("train"));
  EXPECT_EQ(settings.at("min-snr-gamma"), 5.0);
}
