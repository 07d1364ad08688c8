// diffusers' format (checkpoint/diffusers.h) against what diffusers itself wrote and computed:
// tests/data/diffusers holds two pipelines saved by diffusers 0.25.1 (random weights) and, beside
// each, the network's output on given inputs and a whole DDIM-10 loop (its README says how).
#include <gtest/gtest.h>

#include <fstream>

#include "diffuse/checkpoint/diffusers.h"
#include "diffuse/pipeline/pipeline.h"
#include "diffuse_build_config.h"
#include "support/error_of.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::run_command;
using diffuse::testing::TempDir;

namespace {

const std::string kFixtures = std::string(DIFFUSE_SOURCE_DIR) + "/tests/data/diffusers/";

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

void write_json(const std::string& path, const nlohmann::json& j) { std::ofstream(path) << j.dump(2); }

// The config without diffusers' and diffuse's private "_" keys.
nlohmann::json public_keys(nlohmann::json j) {
  for (auto it = j.begin(); it != j.end();) it = it.key()[0] == '_' ? j.erase(it) : std::next(it);
  return j;
}

double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  return (got - want).abs().max().item<double>() / want.abs().max().item<double>();
}

// A copy of a fixture pipeline that a test may break.
std::string copy_fixture(const TempDir& dir, const std::string& name, const std::string& as) {
  const std::string to = dir / as;
  const auto r = run_command("cp -r " + kFixtures + name + " " + to + " && chmod -R u+w " + to);
  EXPECT_EQ(r.status, 0) << r.output;
  return to;
}

// google/ddpm-cifar10-32's UNet config, as its README gives it.
nlohmann::json ddpm_cifar10_config() {
  auto j = read_json(kFixtures + "ddpm-tiny/unet/config.json");
  j["block_out_channels"] = {128, 256, 256, 256};
  j["layers_per_block"] = 2;
  j["norm_num_groups"] = 32;
  j["sample_size"] = 32;
  j["down_block_types"] = {"DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"};
  j["up_block_types"] = {"UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"};
  return j;
}

}  // namespace

class DiffusersFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(DiffusersFixture, ImportedNetworkGivesDiffusersEps) {
  const auto folder = kFixtures + GetParam();
  const auto ref = load_safetensors(folder + "/reference.safetensors");
  auto loaded = load_checkpoint(folder, torch::kCPU);
  EXPECT_EQ(loaded.model->parameter_count(), std::stoll(ref.metadata.at("params")));
  torch::NoGradGuard no_grad;
  const bool labelled = loaded.info.model.num_classes > 0;
  const auto eps =
      loaded.model->forward(ref.at("x"), ref.at("timesteps"), labelled ? ref.at("class_labels") : torch::Tensor());
  EXPECT_LT(relative_error(eps, ref.at("eps")), 1e-4);
}

TEST_P(DiffusersFixture, ImportedPipelineGivesDiffusersDdim10Loop) {
  const auto folder = kFixtures + GetParam();
  const auto ref = load_safetensors(folder + "/reference.safetensors");
  const auto pipe = load_pipeline(folder);
  // diffusers' scheduler config: clip_sample, leading spacing, ε̂ kept as the network gave it
  EXPECT_EQ(pipe.info().sampling.clipped_eps, ClippedEps::keep);
  auto options = default_generate_options(pipe);
  options.sampler.name = "ddim";
  const auto sampler = make_sampler(options.sampler, pipe.diffusion.schedule());
  const auto visited = sampler->timesteps(10);
  const auto want_t = ref.at("ddim10_timesteps");
  ASSERT_EQ(static_cast<int64_t>(visited.size()), want_t.numel());
  for (int64_t i = 0; i < want_t.numel(); ++i) EXPECT_EQ(visited[i], want_t[i].item<int64_t>());

  const auto network = make_denoiser(pipe);
  const bool labelled = pipe.info().model.num_classes > 0;
  const Denoiser denoiser = [&](const torch::Tensor& x, const torch::Tensor& t) {
    return network(x, t, labelled ? ref.at("class_labels") : torch::Tensor());
  };
  const auto x0 = sample_loop(pipe.diffusion, *sampler, denoiser, ref.at("ddim10_x_T").clone(),
                              SampleOptions{10, options.clip_x0}, c10::nullopt);
  EXPECT_LT(relative_error(x0, ref.at("ddim10_x_0")), 1e-4);
}

TEST_P(DiffusersFixture, ThroughDiffuseAndBackGivesTheSameFilesBitForBit) {
  TempDir dir;
  const auto folder = kFixtures + GetParam();
  const auto imported = load_checkpoint(folder, torch::kCPU);
  save_checkpoint(dir / "c.safetensors", imported.model, imported.info);
  const auto own = load_checkpoint(dir / "c.safetensors", torch::kCPU);
  save_diffusers(dir / "out", own.model, own.info);

  const auto original = load_safetensors(folder + "/unet/diffusion_pytorch_model.safetensors");
  const auto written = load_safetensors(dir / "out/unet/diffusion_pytorch_model.safetensors");
  EXPECT_EQ(written.metadata, original.metadata);  // {"format": "pt"}
  ASSERT_EQ(written.tensors.size(), original.tensors.size());
  for (const auto& [name, tensor] : original.tensors) {
    const auto& copy = written.at(name);
    EXPECT_EQ(copy.scalar_type(), torch::kFloat32) << name;
    EXPECT_TRUE(torch::equal(copy, tensor)) << name;
  }
  EXPECT_EQ(public_keys(read_json(dir / "out/unet/config.json")), public_keys(read_json(folder + "/unet/config.json")));
  EXPECT_EQ(public_keys(read_json(dir / "out/scheduler/scheduler_config.json")),
            public_keys(read_json(folder + "/scheduler/scheduler_config.json")));
  EXPECT_EQ(read_json(dir / "out/model_index.json"), read_json(folder + "/model_index.json"));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DiffusersFixture, ::testing::Values("ddpm-tiny", "tiny-cond"),
                         [](const auto& info) { return info.param == "ddpm-tiny" ? "DdpmTiny" : "TinyCond"; });

TEST(Diffusers, AModelBuiltHereExportsWithTheFixturesNamesShapesAndKeys) {
  // ddpm-tiny's structure, written as a diffuse config: 16·(1, 2, 2), attention at 8×8 (level 1)
  UNetConfig c;
  c.in_channels = 3;
  c.image_size = 16;
  c.channels = 16;
  c.channel_mult = {1, 2, 2};
  c.num_res_blocks = 1;
  c.attention_resolutions = {8};
  c.norm_groups = 8;
  c.norm_eps = 1e-6;
  c.dropout = 0.0;
  c.flip_sin_to_cos = false;
  c.freq_shift = 1;
  c.downsample_padding = DownsamplePadding::asymmetric;
  CheckpointInfo info;
  info.model = c;
  info.data = DataInfo{"cifar10", 3, 16, 0};
  TempDir dir;
  save_diffusers(dir / "out", UNet(c), info);
  const auto fixture = load_safetensors(kFixtures + "ddpm-tiny/unet/diffusion_pytorch_model.safetensors");
  const auto written = load_safetensors(dir / "out/unet/diffusion_pytorch_model.safetensors");
  ASSERT_EQ(written.tensors.size(), fixture.tensors.size());
  for (const auto& [name, tensor] : fixture.tensors) EXPECT_EQ(written.at(name).sizes(), tensor.sizes()) << name;
  EXPECT_EQ(public_keys(read_json(dir / "out/unet/config.json")),
            public_keys(read_json(kFixtures + "ddpm-tiny/unet/config.json")));
  // what diffusers' config has no key for comes back from the private block
  const auto back = diffusers_checkpoint_info(dir / "out");
  EXPECT_EQ(back.data.name, "cifar10");
  EXPECT_EQ(to_json(back.model).dump(), to_json(UNetConfig{[&] {
                                          auto named = c;
                                          named.name = "diffusers";
                                          return named;
                                        }()})
                                            .dump());
}

TEST(Diffusers, AClassConditionalModelKeepsItsUnconditionalRow) {
  auto c = diffusers_checkpoint_info(kFixtures + "tiny-cond").model;
  EXPECT_EQ(c.num_classes, 10);
  EXPECT_FALSE(c.null_class);  // diffusers' table: the 10 classes, no ∅
  c.null_class = true;         // as trained here, with label dropout
  TempDir dir;
  CheckpointInfo info;
  info.model = c;
  UNet model(c);
  save_diffusers(dir / "out", model, info);
  EXPECT_EQ(read_json(dir / "out/unet/config.json").at("num_class_embeds"), 11);  // ∅ is label 10 in diffusers too
  const auto back = load_checkpoint(dir / "out", torch::kCPU);
  EXPECT_EQ(back.info.model.num_classes, 10);
  EXPECT_TRUE(back.info.model.null_class);
  EXPECT_TRUE(torch::equal(back.model->named_parameters()["label_embedding.weight"],
                           model->named_parameters()["label_embedding.weight"]));
}

// An image-conditional model's extra input channels are in_channels − out_channels in diffusers'
// config; what they hold (the inpainting or super-resolution condition) travels in the "_diffuse"
// block and comes back, and a block that does not fit the channels is refused naming the file.
TEST(Diffusers, AnImageConditionalModelKeepsItsCondition) {
  for (const ImageCondition condition :
       {ImageCondition{ImageConditionKind::inpaint, 4}, ImageCondition{ImageConditionKind::super_resolution, 4}}) {
    SCOPED_TRACE(to_string(condition.kind));
    TempDir dir;
    CheckpointInfo info;
    info.model = unet_config_by_name("tiny", 1, 16);
    info.model.extra_in_channels = condition_channels(condition, 1);
    info.data = DataInfo{"mnist", 1, 16, 10};
    info.image_condition = condition;
    UNet model(info.model);
    save_diffusers(dir / "out", model, info);
    const auto config = read_json(dir / "out/unet/config.json");
    EXPECT_EQ(config.at("in_channels"), 1 + info.model.extra_in_channels);
    const auto back = load_checkpoint(dir / "out", torch::kCPU);
    ASSERT_TRUE(back.info.image_condition.has_value());
    EXPECT_EQ(back.info.image_condition->kind, condition.kind);
    EXPECT_EQ(back.info.image_condition->factor, condition.factor);
    EXPECT_EQ(back.info.model.extra_in_channels, info.model.extra_in_channels);

    auto wrong = config;  // one channel more than the condition has
    wrong["in_channels"] = 2 + info.model.extra_in_channels;
    std::ofstream(dir / "out/unet/config.json") << wrong.dump();
    const auto msg = error_of([&] { load_checkpoint(dir / "out", torch::kCPU); });
    EXPECT_NE(msg.find("condition has"), std::string::npos) << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  }
}

TEST(Diffusers, WithoutAnUnconditionalRowLabelsAreRequiredAndGuidanceRefused) {
  const auto pipe = load_pipeline(kFixtures + "tiny-cond");
  const auto x = torch::zeros({1, 1, 28, 28});
  const auto t = torch::zeros({1}, torch::kLong);
  EXPECT_NE(error_of([&] { make_denoiser(pipe)(x, t, torch::Tensor()); }).find("without an unconditional class"),
            std::string::npos);
  EXPECT_NE(error_of([&] { make_denoiser(pipe, 2.0); }).find("trained without it"), std::string::npos);
}

TEST(Diffusers, TheDdpmCifar10ConfigurationHasThePapersParameterCountAndLoadsBack) {
  const auto net = unet_config_from_diffusers(ddpm_cifar10_config());
  UNet model(net.model);
  EXPECT_EQ(model->parameter_count(), 35746307);
  EXPECT_EQ(model->parameter_count(), UNet(unet_config_by_name("ddpm-cifar10", 3, 32))->parameter_count());
  TempDir dir;
  CheckpointInfo info;
  info.model = net.model;
  save_diffusers(dir / "cifar", model, info);
  // every tensor found, none left over (load_diffusers_state checks both)
  const auto back = load_checkpoint(dir / "cifar/unet", torch::kCPU);  // a bare unet folder
  EXPECT_EQ(back.model->parameter_count(), 35746307);
  EXPECT_TRUE(
      torch::equal(back.model->named_parameters()["conv_out.weight"], model->named_parameters()["conv_out.weight"]));
}

TEST(Diffusers, SchedulerConfigsBecomeTheScheduleObjectiveAndSamplingDefaults) {
  auto s = scheduler_from_diffusers({{"beta_schedule", "squaredcos_cap_v2"},
                                     {"prediction_type", "sample"},
                                     {"variance_type", "fixed_large"},
                                     {"clip_sample", false},
                                     {"timestep_spacing", "trailing"},
                                     {"num_train_timesteps", 500}});
  EXPECT_EQ(s.schedule.kind, BetaSchedule::cosine);
  EXPECT_EQ(s.schedule.timesteps, 500);
  EXPECT_EQ(s.objective, Objective::x0);
  EXPECT_EQ(scheduler_from_diffusers({{"prediction_type", "v_prediction"}}).objective, Objective::v);
  EXPECT_TRUE(s.sampling.ddpm_large_variance);
  EXPECT_FALSE(s.sampling.clip_x0);
  EXPECT_EQ(s.sampling.spacing, TimestepSpacing::trailing);
  // diffusers' squaredcos_cap_v2: β_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999), ᾱ(u) = cos²((u + 0.008)/1.008 · π/2)
  const auto betas = make_betas(s.schedule);
  for (int64_t i : {0, 100, 250, 499}) {
    auto alpha_bar = [](double u) { return std::pow(std::cos((u + 0.008) / 1.008 * M_PI / 2), 2); };
    const double want = std::min(1 - alpha_bar((i + 1) / 500.0) / alpha_bar(i / 500.0), 0.999);
    EXPECT_NEAR(betas[i], want, 1e-12) << i;
  }
  // trained_betas replace beta_schedule, and go back out as they came
  const auto trained = scheduler_from_diffusers({{"num_train_timesteps", 3}, {"trained_betas", {0.1, 0.25, 0.5}}});
  EXPECT_EQ(make_betas(trained.schedule), (std::vector<double>{0.1, 0.25, 0.5}));
  CheckpointInfo info;
  info.schedule = trained.schedule;
  EXPECT_EQ(diffusers_scheduler_config(info).at("trained_betas"), nlohmann::json({0.1, 0.25, 0.5}));
  info.objective = Objective::v;
  EXPECT_EQ(diffusers_scheduler_config(info).at("prediction_type"), "v_prediction");
  // the DDIM paper's quadratic spacing is not one of diffusers': refused both ways
  info.sampling.spacing = TimestepSpacing::quadratic;
  EXPECT_NE(error_of([&] { diffusers_scheduler_config(info); }).find("quadratic"), std::string::npos);
  EXPECT_NE(error_of([&] {
              scheduler_from_diffusers({{"timestep_spacing", "quadratic"}});
            }).find("timestep_spacing"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              scheduler_from_diffusers({{"num_train_timesteps", 3}, {"trained_betas", {0.1}}});
            }).find("trained_betas"),
            std::string::npos);
  // DDPMScheduler's defaults for a bare unet folder
  const auto d = scheduler_from_diffusers(nlohmann::json::object());
  EXPECT_EQ(d.schedule.kind, BetaSchedule::linear);
  EXPECT_EQ(d.schedule.timesteps, 1000);
  EXPECT_TRUE(d.sampling.clip_x0);
}

TEST(Diffusers, BrokenFoldersAreRefusedNamingWhatIsWrong) {
  TempDir dir;
  // a missing weights file
  const auto missing = copy_fixture(dir, "ddpm-tiny", "missing");
  std::remove((missing + "/unet/diffusion_pytorch_model.safetensors").c_str());
  EXPECT_NE(
      error_of([&] { load_checkpoint(missing, torch::kCPU); }).find("diffusion_pytorch_model.safetensors' is missing"),
      std::string::npos);
  // a missing scheduler config in a pipeline
  const auto no_scheduler = copy_fixture(dir, "tiny-cond", "no_scheduler");
  std::remove((no_scheduler + "/scheduler/scheduler_config.json").c_str());
  EXPECT_NE(error_of([&] { load_checkpoint(no_scheduler, torch::kCPU); }).find("scheduler config"), std::string::npos);

  const auto config = read_json(kFixtures + "ddpm-tiny/unet/config.json");
  auto refused = [&](const std::string& key, const nlohmann::json& value) {
    auto broken = config;
    broken[key] = value;
    return error_of([&] { unet_config_from_diffusers(broken); });
  };
  EXPECT_NE(
      refused("down_block_types", {"DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}).find("CrossAttnDownBlock2D"),
      std::string::npos);
  EXPECT_NE(refused("time_embedding_type", "fourier").find("time_embedding_type"), std::string::npos);
  EXPECT_NE(refused("cross_attention_dim", 768).find("cross_attention_dim"), std::string::npos);
  EXPECT_NE(refused("up_block_types", {"AttnUpBlock2D", "UpBlock2D", "UpBlock2D"}).find("same levels"),
            std::string::npos);
  EXPECT_NE(refused("layers_per_block", "two").find("expected an integer"), std::string::npos);

  // a shape that does not match the config
  const auto shape = copy_fixture(dir, "ddpm-tiny", "shape");
  auto wider = config;
  wider["block_out_channels"] = {16, 32, 64};
  write_json(shape + "/unet/config.json", wider);
  const auto shape_error = error_of([&] { load_checkpoint(shape, torch::kCPU); });
  EXPECT_NE(shape_error.find("has shape"), std::string::npos) << shape_error;

  // a tensor the config does not describe: attention added where the weights have none
  const auto extra = copy_fixture(dir, "ddpm-tiny", "extra");
  auto no_mid = config;
  no_mid["add_attention"] = false;
  write_json(extra + "/unet/config.json", no_mid);
  EXPECT_NE(error_of([&] { load_checkpoint(extra, torch::kCPU); }).find("unexpected tensor 'mid_block.attentions.0"),
            std::string::npos);

  // a scheduler key of the wrong type
  const auto scheduler = copy_fixture(dir, "ddpm-tiny", "scheduler");
  auto s = read_json(kFixtures + "ddpm-tiny/scheduler/scheduler_config.json");
  s["beta_start"] = "0.0001";
  write_json(scheduler + "/scheduler/scheduler_config.json", s);
  const auto type_error = error_of([&] { load_checkpoint(scheduler, torch::kCPU); });
  EXPECT_NE(type_error.find("\"beta_start\""), std::string::npos) << type_error;
  EXPECT_NE(type_error.find("expected a finite number"), std::string::npos) << type_error;
  EXPECT_NE(error_of([&] {
              scheduler_from_diffusers({{"prediction_type", "flow"}});
            }).find("prediction_type"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_checkpoint(dir.str(), torch::kCPU); }).find("not a diffusers folder"),
            std::string::npos);
}

TEST(Diffusers, TheCliSamplesAndConvertsADiffusersFolder) {
  TempDir dir;
  const std::string diffuse = DIFFUSE_BINARY;
  const auto sample = run_command(diffuse + " sample --checkpoint " + kFixtures +
                                  "ddpm-tiny --n 2 --steps 4 --no-progress --out " + dir / "g.png");
  EXPECT_EQ(sample.status, 0) << sample.output;
  const auto to_diffuse = run_command(diffuse + " convert --checkpoint " + kFixtures +
                                      "tiny-cond --format diffuse --out " + dir / "c.safetensors");
  EXPECT_EQ(to_diffuse.status, 0) << to_diffuse.output;
  const auto back = run_command(diffuse + " convert --checkpoint " + dir / "c.safetensors" + " --out " + dir / "p");
  EXPECT_EQ(back.status, 0) << back.output;
  EXPECT_TRUE(torch::equal(
      load_safetensors(dir / "p/unet/diffusion_pytorch_model.safetensors").at("class_embedding.weight"),
      load_safetensors(kFixtures + "tiny-cond/unet/diffusion_pytorch_model.safetensors").at("class_embedding.weight")));
}
