// diffuse show: pictures of the process.
//   schedule  ᾱ_t, SNR(t), β_t and β̃_t against t for the three β schedules (one PNG of 4 panels)
//   forward   x_t ~ q(x_t|x_0) of real images at several t (rows: images; columns: t)
#include <cstdio>
#include <memory>

#include "commands.h"
#include "diffuse/data/captioned_digits.h"
#include "diffuse/data/dataset.h"
#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/io/image.h"
#include "diffuse/plot/figure.h"

namespace diffuse::cli {

namespace {

struct ShowOptions {
  std::string out, data = "mnist", schedule = "linear";
  std::vector<std::string> images;
  std::vector<int64_t> test_indices{0, 1, 2, 3}, ts{0, 50, 100, 250, 500, 750, 1000};
  int64_t timesteps = 1000, n = 8;
  uint64_t seed = 0;
  std::string split = "train";
};

void run_show_schedule(const ShowOptions& o) {
  LinePlot alpha_bar{"cumulative signal: alpha-bar_t", "t", "alpha-bar_t", false, {}};
  LinePlot snr{"signal-to-noise ratio alpha-bar / (1 - alpha-bar)", "t", "SNR(t)", true, {}};
  LinePlot beta{"beta_t (forward step variance)", "t", "beta_t", true, {}};
  LinePlot beta_tilde{"beta-tilde_t (posterior variance)", "t", "beta-tilde_t", true, {}};
  for (auto kind : {BetaSchedule::linear, BetaSchedule::cosine, BetaSchedule::scaled_linear}) {
    ScheduleConfig config;
    config.kind = kind;
    config.timesteps = o.timesteps;
    NoiseSchedule s(config);
    std::vector<double> t(static_cast<size_t>(o.timesteps));
    for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<double>(i + 1);  // 1-based, as in the papers
    const std::string name = to_string(kind);
    alpha_bar.series.push_back({name, t, s.alpha_bar});
    snr.series.push_back({name, t, s.snr});
    beta.series.push_back({name, t, s.betas});
    beta_tilde.series.push_back({name, t, s.posterior_variance});
  }
  save_line_plots(o.out, {alpha_bar, snr, beta, beta_tilde}, 2);
  std::fprintf(stderr, "wrote %s (T = %lld; linear, cosine and scaled-linear schedules)\n", o.out.c_str(),
               static_cast<long long>(o.timesteps));
}

void run_show_forward(const ShowOptions& o) {
  ScheduleConfig config;
  config.kind = beta_schedule_from_string(o.schedule);
  config.timesteps = o.timesteps;
  GaussianDiffusion diffusion(NoiseSchedule(config), Objective::eps, torch::kCPU);
  std::vector<torch::Tensor> inputs;
  for (const auto& path : o.images) inputs.push_back(from_uint8(load_image_u8(path, image_file_channels(path) <= 2 ? 1 : 3, 0)));
  if (o.images.empty()) {
    auto test = load_dataset(o.data, Split::test);
    for (int64_t i : o.test_indices) {
      if (i < 0 || i >= test.size()) {
        throw std::runtime_error("--test-index " + std::to_string(i) + ": the test split has " + std::to_string(test.size()) + " images");
      }
      inputs.push_back(from_uint8(test.images[i]));
    }
  }
  for (const auto& x : inputs) {
    if (x.sizes() != inputs[0].sizes()) throw std::runtime_error("show forward: all images must have the same size and channels");
  }
  auto gen = at::detail::createCPUGenerator(o.seed);
  std::vector<torch::Tensor> tiles;
  std::vector<std::string> labels;
  for (int64_t t1 : o.ts) {
    if (t1 < 0 || t1 > o.timesteps) throw std::runtime_error("--ts: " + std::to_string(t1) + " outside [0, T]");
    labels.push_back("t=" + std::to_string(t1));
  }
  for (const auto& x0 : inputs) {
    auto x = x0.unsqueeze(0);
    auto noise = torch::randn(x.sizes(), gen);  // one ε per image: the columns differ only in t
    for (int64_t t1 : o.ts) {
      // x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε; t = 0 is the image itself
      tiles.push_back(t1 == 0 ? x0 : diffusion.q_sample(x, torch::full({1}, t1 - 1, torch::kLong), noise)[0]);
    }
  }
  save_labelled_grid(o.out, torch::stack(tiles), static_cast<int64_t>(o.ts.size()), labels, {}, 3);
  std::fprintf(stderr, "wrote %s (rows: images; columns: %s schedule at the given t)\n", o.out.c_str(), o.schedule.c_str());
}

void run_show_captions(const ShowOptions& o) {
  ComposeOptions c;
  c.n = o.n;
  c.seed = o.seed;
  c.split = split_from_string(o.split);
  const auto digits = compose_captioned_digits(load_dataset("mnist", c.split), c);
  // one canvas per row, its caption beside it
  save_labelled_grid(o.out, from_uint8(digits.images.images), 1, {}, digits.captions, 4);
  std::fprintf(stderr, "wrote %s (%lld captioned canvases of the %s split)\n", o.out.c_str(),
               static_cast<long long>(c.n), o.split.c_str());
}

}  // namespace

void add_show_command(CLI::App& app) {
  auto* show = app.add_subcommand("show", "Pictures of the process: schedule plots, the forward process");
  show->require_subcommand(1);
  auto o = std::make_shared<ShowOptions>();

  auto* schedule = show->add_subcommand("schedule", "Plot alpha-bar, SNR, beta and beta-tilde of the schedules");
  schedule->add_option("--out", o->out, "PNG file")->required()->check(writable_output_file());
  schedule->add_option("--timesteps", o->timesteps, "T")->check(CLI::Range(2, 100000))->capture_default_str();
  schedule->callback([o] { run_show_schedule(*o); });

  auto* forward = show->add_subcommand("forward", "x_t of real images at several t");
  forward->add_option("--out", o->out, "PNG file")->required()->check(writable_output_file());
  forward->add_option("--data", o->data, "Data set for --test-index")->capture_default_str();
  forward->add_option("--test-index", o->test_indices, "Images of the test split")->delimiter(',')->capture_default_str();
  forward->add_option("--image", o->images, "Image files instead");
  forward->add_option("--ts", o->ts, "Timesteps (0 = the image)")->delimiter(',')->capture_default_str();
  forward->add_option("--schedule", o->schedule, "Beta schedule")
      ->check(CLI::IsMember({"linear", "cosine", "scaled-linear"}))
      ->capture_default_str();
  forward->add_option("--timesteps", o->timesteps, "T")->check(CLI::Range(2, 100000))->capture_default_str();
  forward->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  forward->callback([o] { run_show_forward(*o); });

  auto* captions = show->add_subcommand("captions", "Captioned digits: two MNIST digits on a canvas and their caption");
  captions->add_option("--out", o->out, "PNG file")->required()->check(writable_output_file());
  captions->add_option("--n", o->n, "Canvases")->check(CLI::Range(1, 64))->capture_default_str();
  captions->add_option("--split", o->split, "train (held-out captions left out) or test")
      ->check(CLI::IsMember({"train", "test"}))
      ->capture_default_str();
  captions->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  captions->callback([o] { run_show_captions(*o); });
}

}  // namespace diffuse::cli
