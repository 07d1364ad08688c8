// diffuse sample: draw images from a checkpoint with any sampler (optionally per class, guided); a grid, one PNG per image,
// and optionally the trajectory of x_t and x̂_0.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "diffuse/io/image.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/util/progress.h"
#include "sampling_progress.h"

namespace diffuse::cli {

namespace {

// Labels for --class: "all" (one row per class), "none" (the unconditional model ∅) or one class.
struct ClassSelection {
  torch::Tensor labels;  // undefined: unconditional
  int64_t per_row = 0;   // grid width (0: square)
};

ClassSelection select_classes(const std::string& label, double guidance, const UNetConfig& model, int64_t n) {
  const int64_t classes = model.num_classes;
  if (classes == 0) {
    if (label != "all" && label != "none") {
      throw std::runtime_error("--class " + label + ": this checkpoint is not class-conditional (train with --class-cond)");
    }
    if (guidance > 0 && !model.text_conditional()) {
      throw std::runtime_error(
          "--guidance needs a class- or text-conditional checkpoint (train with --class-cond or "
          "--text-cond); an image-conditional one is guided under its condition by edit inpaint or edit upscale");
    }
    return {};
  }
  if (label == "all") {
    auto rows = class_rows(n, classes);
    return {rows.labels, rows.per_row};
  }
  if (label == "none") {
    if (guidance > 0) throw std::runtime_error("--guidance needs a class: with --class none there is nothing to guide to");
    if (!model.null_class)
      throw std::runtime_error("--class none: this model was trained without an unconditional class");
    return {torch::full({n}, classes, torch::kLong), 0};
  }
  int64_t k = -1;
  try {
    size_t used = 0;
    k = std::stoll(label, &used);
    if (used != label.size()) k = -1;
  } catch (const std::exception&) {
    k = -1;
  }
  if (k < 0 || k >= classes) {
    throw std::runtime_error("--class " + label + ": expected all, none or a class in [0, " + std::to_string(classes - 1) + "]");
  }
  return {torch::full({n}, k, torch::kLong), 0};
}

// Each pixel as a k×k block (nearest neighbour): grids of 28×28 images large enough to look at.
torch::Tensor enlarged(const torch::Tensor& images, int64_t k) {
  return k == 1 ? images : images.repeat_interleave(k, 2).repeat_interleave(k, 3);
}

struct SampleCliOptions {
  std::string checkpoint, out, out_dir, trajectory, label = "all", negative_prompt;
  std::vector<std::string> prompts;
  ComputeFlags compute;
  double guidance = 0.0;
  SamplerFlags sampler;
  int64_t n = 64, batch_size = 256, trajectory_frames = 10, scale = 1;
  uint64_t seed = 0;
  bool progress = true;
};

void run_sample(const SampleCliOptions& o) {
  if (o.out.empty() && o.out_dir.empty()) throw std::runtime_error("sample: give --out FILE.png and/or --out-dir DIR");
  const auto compute = resolve_compute(o.compute, Workload::inference);
  c10::InferenceMode inference;
  const auto pipeline = load_pipeline(o.checkpoint, compute);
  GenerateOptions g;
  g.sampler = sampler_config_of(o.sampler, pipeline.info().sampling);
  g.steps = o.sampler.steps;
  g.n = o.n;
  g.batch_size = o.batch_size;
  g.seed = o.seed;
  g.guidance = o.guidance;
  g.clip_x0 = clip_x0_of(o.sampler, pipeline.info().sampling);
  ClassSelection selection = select_classes(o.label, o.guidance, pipeline.info().model, o.n);
  g.labels = selection.labels;
  if (!o.prompts.empty() || !o.negative_prompt.empty()) {
    if (!pipeline.info().model.text_conditional()) {
      throw std::runtime_error("--prompt: '" + o.checkpoint + "' is not text-conditional (train with --text-cond)");
    }
    // k prompts: a row of ⌈n/k⌉ images each
    const auto rows = class_rows(o.n, std::max<int64_t>(1, static_cast<int64_t>(o.prompts.size())));
    for (int64_t i = 0; i < o.n && !o.prompts.empty(); ++i)
      g.prompts.push_back(o.prompts[rows.labels[i].item<int64_t>()]);
    if (o.prompts.size() > 1) selection.per_row = rows.per_row;
    g.negative_prompt = o.negative_prompt;
  } else if (pipeline.info().model.text_conditional()) {
    std::fprintf(stderr, "no --prompt: sampling the unconditional model (the empty prompt)\n");
  }
  const int64_t steps = sampling_steps(pipeline, g);
  std::vector<torch::Tensor> frames_xt, frames_x0;
  // Trajectory frames: step indices round(k (S − 1)/(F − 2)), k = 0..F−2; the final image is the last column.
  std::vector<bool> keep_frame(steps, false);
  const int64_t frames = std::min(o.trajectory_frames - 1, steps);
  for (int64_t k = 0; k < frames; ++k) keep_frame[frames == 1 ? 0 : (k * (steps - 1) + (frames - 1) / 2) / (frames - 1)] = true;
  const int64_t traj_images = std::min<int64_t>(o.n, 4);
  SamplingProgress bar(o.sampler.sampler + "-" + std::to_string(steps), o.n, o.batch_size, steps, o.progress);
  BatchStepCallback cb = [&](int64_t first, const SampleStep& s) {
    bar.update(first, s);
    if (first == 0 && !o.trajectory.empty() && keep_frame[s.index]) {
      frames_xt.push_back(s.x_t.narrow(0, 0, traj_images).to(torch::kCPU));
      frames_x0.push_back(s.x0_pred.narrow(0, 0, traj_images).to(torch::kCPU));
    }
  };
  // Images go to --out-dir batch by batch as they are made; the grid keeps the first kGridImages.
  constexpr int64_t kGridImages = 1024;
  if (!o.out_dir.empty()) std::filesystem::create_directories(o.out_dir);
  std::vector<torch::Tensor> shown;
  int64_t kept = 0;
  const BatchDoneCallback on_batch = [&](int64_t first, const torch::Tensor& images) {
    if (!o.out_dir.empty()) {
      for (int64_t i = 0; i < images.size(0); ++i) {
        char name[32];
        std::snprintf(name, sizeof name, "/%06lld.png", static_cast<long long>(first + i));
        save_image_png(o.out_dir + name, images[i]);
      }
    }
    if (kept < kGridImages) {
      const int64_t take = std::min(images.size(0), kGridImages - kept);
      shown.push_back(images.narrow(0, 0, take));
      kept += take;
    }
  };
  generate(pipeline, g, cb, on_batch);
  bar.finish();
  const auto all = torch::cat(shown);
  if (!o.out.empty()) {
    save_grid_png(o.out, enlarged(all, o.scale), selection.per_row);
    std::fprintf(stderr, "wrote %s (%lld images%s)\n", o.out.c_str(), static_cast<long long>(all.size(0)),
                 o.n > kGridImages ? (", the first of " + std::to_string(o.n)).c_str() : "");
  }
  if (!o.out_dir.empty()) {
    std::fprintf(stderr, "wrote %lld images to %s\n", static_cast<long long>(o.n), o.out_dir.c_str());
  }
  if (!o.trajectory.empty()) {
    // Rows: for each image, x_t then x̂_0; columns: steps from t = T to the end, then the result.
    const int64_t cols = static_cast<int64_t>(frames_xt.size()) + 1;
    std::vector<torch::Tensor> tiles;
    for (int64_t i = 0; i < traj_images; ++i) {
      for (const auto& f : frames_xt) tiles.push_back(f[i].clamp(-1, 1));
      tiles.push_back(all[i]);
      for (const auto& f : frames_x0) tiles.push_back(f[i].clamp(-1, 1));
      tiles.push_back(all[i]);
    }
    save_grid_png(o.trajectory, enlarged(torch::stack(tiles), o.scale), cols);
    std::fprintf(stderr, "wrote %s (rows: x_t, x0_pred for %lld images; %lld columns)\n", o.trajectory.c_str(),
                 static_cast<long long>(traj_images), static_cast<long long>(cols));
  }
}

}  // namespace

void add_sample_command(CLI::App& app) {
  auto o = std::make_shared<SampleCliOptions>();
  auto* cmd = app.add_subcommand("sample", "Generate images from a checkpoint");
  cmd->add_option("--checkpoint", o->checkpoint,
                  "checkpoint.safetensors written by diffuse train, or a diffusers folder")
      ->required()
      ->check(CLI::ExistingPath);
  add_sampler_options(*cmd, o->sampler);
  cmd->add_option("--class", o->label, "Class-conditional checkpoints: all (a row per class), none, or a class index")
      ->capture_default_str();
  cmd->add_option("--prompt", o->prompts,
                  "Text-conditional checkpoints: what to draw (given k times: k rows of images)");
  cmd->add_option("--negative-prompt", o->negative_prompt,
                  "Text-conditional checkpoints: what guidance steers away from (in place of the empty prompt)");
  cmd->add_option("--guidance", o->guidance, "Classifier-free guidance w: (1+w) eps(x,y) - w eps(x)")
      ->check(guidance_range())
      ->capture_default_str();
  cmd->add_option("--n", o->n, "Number of images")->check(CLI::Range(1, 100000))->capture_default_str();
  cmd->add_option("--batch-size", o->batch_size, "Images per network call")->check(positive_number())->capture_default_str();
  cmd->add_option("--seed", o->seed, "Random seed (same seed, same images)")->capture_default_str();
  cmd->add_option("--out", o->out, "Grid of all images (PNG)")->check(writable_output_file());
  cmd->add_option("--scale", o->scale, "Draw each pixel of --out's and --trajectory's grids as a KxK block")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--out-dir", o->out_dir, "Also write one PNG per image here");
  cmd->add_option("--trajectory", o->trajectory, "PNG of x_t and x0_pred along the way (first 4 images)")
      ->check(writable_output_file());
  cmd->add_option("--trajectory-frames", o->trajectory_frames, "Columns in the trajectory (the last is the result)")
      ->check(CLI::Range(2, 100))
      ->capture_default_str();
  cmd->add_flag("--no-progress", [o](int64_t) { o->progress = false; }, "No progress bar");
  add_compute_options(*cmd, o->compute);
  add_cuda_graph_option(*cmd, o->compute);
  cmd->callback([o] { run_sample(*o); });
}

}  // namespace diffuse::cli
