// diffuse edit: real images through the diffusion process.
//   sdedit       noise an image to x_t and denoise it (SDEdit)
//   sweep        the same for a list of t on held-out images: MSE/PSNR table and a figure
//   invert       DDIM inversion x_0 → x_T → x_0: reconstruction PSNR against steps
//   inpaint      fill the white part of a mask: by a model trained for it (--image-cond inpaint), else
//                RePaint-style with an unconditional model (optional resampling)
//   upscale      super-resolution by a model trained for it (--image-cond super-resolution), beside bicubic
//   interpolate  slerp between the inverted latents of two images, decoded with DDIM η = 0
//   mix          denoise a pixel mixture of two images from an intermediate t
// Inputs are PNG/JPEG files (--image) or images of the checkpoint's test split (--test-index).
#include <chrono>
#include <cstdio>
#include <iomanip>
#include <memory>
#include <sstream>

#include "commands.h"
#include "diffuse/data/dataset.h"
#include "diffuse/diffusion/image_condition.h"
#include "diffuse/edit/ddim_inversion.h"
#include "diffuse/edit/inpaint.h"
#include "diffuse/edit/interpolate.h"
#include "diffuse/edit/mix.h"
#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/io/image.h"
#include "diffuse/plot/figure.h"
#include "diffuse/util/progress.h"
#include "sampling_progress.h"

namespace diffuse::cli {

namespace {

struct EditOptions {
  std::string checkpoint, out, mask;
  ComputeFlags compute;
  std::vector<std::string> images, low_res;
  std::vector<std::string> test_indices;  // "3", "0-31" (a range, both ends included)
  std::vector<int64_t> ts{50, 100, 250, 500, 750, 1000}, step_list{10, 20, 50, 100, 200};
  SamplerFlags sampler;
  int64_t t = 0, resample = 0, frames = 8;
  double strength = 0.0, guidance = 0.0;
  uint64_t seed = 0;
  bool progress = true, cfid = false;
};

// What every edit needs: the model, its diffusion, and the input images in [−1, 1].
struct EditContext {
  Pipeline pipeline;
  Denoiser net;  // the network without labels (make_unconditional_denoiser)
  torch::Tensor inputs;  // [B, C, H, W]
  torch::Generator gen;
  std::shared_ptr<ProgressBar> bar;  // over the network's evaluations, once track_progress has set it up

  // From here on `net` counts its evaluations on a bar of `total` (as the mode reckons them).
  void track_progress(const EditOptions& o, const std::string& label, int64_t total) {
    if (!o.progress) return;
    bar = std::make_shared<ProgressBar>(label, total);
    auto calls = std::make_shared<int64_t>(0);
    net = [inner = net, b = bar, calls](const torch::Tensor& x, const torch::Tensor& t) {
      auto out = inner(x, t);
      b->update(++*calls);
      return out;
    };
  }
  void finish_progress() {
    if (bar) bar->finish();
  }
};

torch::Tensor load_input_file(const std::string& path, const DataInfo& data) {
  const int file_channels = image_file_channels(path);
  const int channels = file_channels <= 2 ? 1 : 3;  // alpha is dropped
  if (channels != data.channels) {
    throw std::runtime_error("image '" + path + "' has " + std::to_string(channels) + " colour channel(s), but the model expects " +
                             std::to_string(data.channels));
  }
  auto img = load_image_u8(path, channels, /*size=*/0);
  if (img.size(1) != data.image_size || img.size(2) != data.image_size) {
    throw std::runtime_error("image '" + path + "' is " + std::to_string(img.size(2)) + "×" + std::to_string(img.size(1)) +
                             ", but the model expects " + std::to_string(data.image_size) + "×" +
                             std::to_string(data.image_size) + " (resize it first)");
  }
  return from_uint8(img);
}

// "--test-index 0-3,7" → 0, 1, 2, 3, 7.
std::vector<int64_t> expand_indices(const std::vector<std::string>& items) {
  std::vector<int64_t> out;
  for (const auto& item : items) {
    const auto dash = item.find('-', 1);
    auto number = [&](const std::string& text) {
      size_t used = 0;
      int64_t value = -1;
      try {
        value = std::stoll(text, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != text.size() || value < 0) {
        throw std::runtime_error("--test-index " + item + ": expected an index or a range such as 0-31");
      }
      return value;
    };
    const int64_t first = number(item.substr(0, dash));
    const int64_t last = dash == std::string::npos ? first : number(item.substr(dash + 1));
    if (last < first || last - first >= 100000) throw std::runtime_error("--test-index " + item + ": a bad range");
    for (int64_t i = first; i <= last; ++i) out.push_back(i);
  }
  return out;
}

EditContext open_edit(const EditOptions& o, size_t min_inputs) {
  const auto compute = resolve_compute(o.compute, Workload::inference);
  auto pipeline = load_pipeline(o.checkpoint, compute);
  const auto& data = pipeline.info().data;
  std::vector<torch::Tensor> inputs;
  for (const auto& path : o.images) inputs.push_back(load_input_file(path, data));
  if (!o.test_indices.empty()) {
    if (data.name.empty())
      throw std::runtime_error("--test-index: the checkpoint does not name its data set; use --image");
    auto test = load_dataset(data.name, Split::test, DataOptions{data.image_size, 0});
    for (int64_t i : expand_indices(o.test_indices)) {
      if (i < 0 || i >= test.size()) {
        throw std::runtime_error("--test-index " + std::to_string(i) + ": the test split has " + std::to_string(test.size()) + " images");
      }
      inputs.push_back(from_uint8(test.images[i]));
    }
  }
  if (inputs.size() < min_inputs) {
    throw std::runtime_error("edit: needs " + std::to_string(min_inputs) + " input image(s): give --image FILE or --test-index N");
  }
  auto net = make_unconditional_denoiser(pipeline);
  auto stacked = inputs.empty() ? torch::Tensor() : torch::stack(inputs).to(compute.device);
  return EditContext{std::move(pipeline), std::move(net), std::move(stacked), at::detail::createCPUGenerator(o.seed)};
}

// Images drawn from an image-conditional model under `conditions` [B, C', H, W] (one image each),
// with the sampler flags, --guidance and --seed; on the conditions' device.
torch::Tensor generate_under(const EditOptions& o, const EditContext& c, const torch::Tensor& conditions,
                             const std::string& label) {
  GenerateOptions g;
  g.sampler = sampler_config_of(o.sampler, c.pipeline.info().sampling);
  g.steps = o.sampler.steps;
  g.clip_x0 = clip_x0_of(o.sampler, c.pipeline.info().sampling);
  g.n = conditions.size(0);
  g.seed = o.seed;
  g.guidance = o.guidance;
  g.image_conditions = conditions.to(torch::kCPU);
  SamplingProgress bar(label, g.n, g.batch_size, sampling_steps(c.pipeline, g), o.progress);
  auto images = generate(c.pipeline, g, [&](int64_t first, const SampleStep& s) { bar.update(first, s); });
  bar.finish();
  return images.to(conditions.device());
}

// --cfid: the cFID of an edit's results (at least 2) against the checkpoint's test split, and its floor at this n.
void print_cfid(const EditOptions& o, const EditContext& c,
                const std::vector<std::pair<std::string, torch::Tensor>>& named_results) {
  if (!o.cfid) return;
  const auto& data = c.pipeline.info().data;
  if (data.name.empty()) throw std::runtime_error("--cfid: the checkpoint does not name its data set");
  // both splits read, and the reference's features computed, once for all the results
  const auto reference = load_dataset(data.name, Split::test, DataOptions{data.image_size, 0});
  const auto training_split = [&] { return load_dataset(data.name, Split::train, DataOptions{data.image_size, 0}); };
  CfidReference cfid(reference, training_split, o.progress);
  for (const auto& [what, results] : named_results) {
    const auto r = cfid.score(results, o.seed);
    std::printf(
        "cFID of %s: %.2f against the %lld test images (%lld real training images: %.2f, the floor at this n)\n",
        what.c_str(), r.cfid, static_cast<long long>(reference.size()), static_cast<long long>(r.images), r.cfid_real);
  }
}

// A figure shows the first 16 of many images, one row each (the numbers are over all of them).
int64_t figure_rows(const EditOptions& o, int64_t images) {
  constexpr int64_t kRows = 16;
  if (images > kRows && !o.out.empty()) {
    std::fprintf(stderr, "the figure shows the first %lld of the %lld images\n", static_cast<long long>(kRows),
                 static_cast<long long>(images));
  }
  return std::min(images, kRows);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

void write_figure(const std::string& path, const std::vector<torch::Tensor>& tiles, int64_t columns, const std::string& what,
                  const std::vector<std::string>& column_labels, const std::vector<std::string>& row_labels = {}) {
  if (path.empty()) return;
  save_labelled_grid(path, torch::stack(tiles).to(torch::kCPU).clamp(-1, 1), columns, column_labels, row_labels, 3);
  std::fprintf(stderr, "wrote %s (%s)\n", path.c_str(), what.c_str());
}

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

int64_t edit_steps(const EditOptions& o, int64_t t) {
  // Steps on [0, t]: --steps if given, else the sampler's default scaled to the part of the chain used.
  const int64_t full = o.sampler.steps > 0 ? o.sampler.steps : (o.sampler.sampler == "ddpm" ? 1000000 : 50);
  return std::max<int64_t>(1, std::min<int64_t>(full, t + 1));
}

void run_sdedit(const EditOptions& o) {
  auto c = open_edit(o, 1);
  const int64_t T = c.pipeline.diffusion.timesteps();
  if ((o.t > 0) == (o.strength > 0)) throw std::runtime_error("sdedit: give exactly one of --t (1..T) or --strength (0..1]");
  if (o.t > T) throw std::runtime_error("--t " + std::to_string(o.t) + " is beyond the checkpoint's T = " + std::to_string(T));
  const int64_t t = o.t > 0 ? o.t - 1 : timestep_for_strength(o.strength, T);
  int64_t unused = 0;
  auto sampler = make_sampler_from_flags(o.sampler, c.pipeline, unused);
  c.track_progress(o, "sdedit", sampler->evaluations(edit_steps(o, t)));
  auto r = noise_and_denoise(c.pipeline.diffusion, *sampler, c.net, c.inputs, t, edit_steps(o, t),
                             clip_x0_of(o.sampler, c.pipeline.info().sampling), c.gen);
  c.finish_progress();
  if (r.t != t) {  // the sampler's grid of S steps on [0, t] starts at its own first timestep
    std::fprintf(stderr, "--t %lld: the grid of %lld %s steps starts at t = %lld, where the images are noised\n",
                 static_cast<long long>(t + 1), static_cast<long long>(edit_steps(o, t)), o.sampler.sampler.c_str(),
                 static_cast<long long>(r.t + 1));
  }
  auto p = psnr(r.result.clamp(-1, 1), c.inputs);
  std::vector<torch::Tensor> tiles;
  for (int64_t i = 0; i < c.inputs.size(0); ++i) {
    std::printf("image %lld: t = %lld, PSNR to the original %.2f dB\n", static_cast<long long>(i),
                static_cast<long long>(r.t + 1), p[i].item<double>());
    for (const auto& x : {c.inputs[i], r.x_t[i], r.result[i]}) tiles.push_back(x);
  }
  write_figure(o.out, tiles, 3, "columns: original, x_t, result", {"original", "t=" + std::to_string(r.t + 1), "result"});
}

void run_sweep(const EditOptions& o) {
  auto c = open_edit(o, 1);
  const int64_t T = c.pipeline.diffusion.timesteps(), shown = std::min<int64_t>(c.inputs.size(0), 3);
  int64_t unused = 0;
  auto sampler = make_sampler_from_flags(o.sampler, c.pipeline, unused);
  std::printf("%6s  %10s  %9s   (%lld images, %s)\n", "t", "MSE", "PSNR dB", static_cast<long long>(c.inputs.size(0)),
              o.sampler.sampler.c_str());
  std::vector<torch::Tensor> tiles;
  std::vector<std::string> rows, columns;
  for (int64_t i = 0; i < shown; ++i)
    for (const char* name : {"original", "x_t", "result"}) columns.push_back(name);
  int64_t evaluations = 0;
  for (int64_t t1 : o.ts) {
    if (t1 < 1 || t1 > T) throw std::runtime_error("--ts: " + std::to_string(t1) + " outside [1, " + std::to_string(T) + "]");
    evaluations += sampler->evaluations(edit_steps(o, t1 - 1));
  }
  c.track_progress(o, "sweep", evaluations);
  for (int64_t t1 : o.ts) {
    auto r = noise_and_denoise(c.pipeline.diffusion, *sampler, c.net, c.inputs, t1 - 1, edit_steps(o, t1 - 1),
                               clip_x0_of(o.sampler, c.pipeline.info().sampling), c.gen);
    rows.push_back("t=" + std::to_string(r.t + 1));
    auto result = r.result.clamp(-1, 1);
    const double mse = (result - c.inputs).pow(2).mean().item<double>();
    std::printf("%6lld  %10.5f  %9.2f\n", static_cast<long long>(r.t + 1), mse, psnr(result, c.inputs).mean().item<double>());
    for (int64_t i = 0; i < shown; ++i)
      for (const auto& x : {c.inputs[i], r.x_t[i], result[i]}) tiles.push_back(x);
  }
  c.finish_progress();
  write_figure(o.out, tiles, 3 * shown, "rows: t; columns: original, x_t, result per image", columns, rows);
  if (c.inputs.size(0) > shown) {
    std::fprintf(stderr, "the figure shows the first %lld of the %lld images; the table is over all of them\n",
                 static_cast<long long>(shown), static_cast<long long>(c.inputs.size(0)));
  }
}

void run_invert(const EditOptions& o) {
  auto c = open_edit(o, 1);
  const auto spacing = sampler_config_of(o.sampler, c.pipeline.info().sampling).spacing;
  std::printf("%6s  %9s   (DDIM inversion and decoding, eta 0, x0 unclipped, %lld images)\n", "steps", "PSNR dB",
              static_cast<long long>(c.inputs.size(0)));
  std::vector<torch::Tensor> latents, recons;
  int64_t evaluations = 0;
  for (int64_t S : o.step_list) {
    if (S < 2 || S > c.pipeline.diffusion.timesteps()) throw std::runtime_error("--steps-list: " + std::to_string(S) + " outside [2, T]");
    evaluations += 2 * S;  // S to invert, S to decode
  }
  c.track_progress(o, "invert", evaluations);
  for (int64_t S : o.step_list) {
    auto x_T = ddim_invert(c.pipeline.diffusion, c.net, c.inputs, S, spacing);
    auto back = ddim_decode(c.pipeline.diffusion, c.net, x_T, S, spacing).clamp(-1, 1);
    std::printf("%6lld  %9.2f\n", static_cast<long long>(S), psnr(back, c.inputs).mean().item<double>());
    latents.push_back(x_T);
    recons.push_back(back);
  }
  c.finish_progress();
  std::vector<torch::Tensor> tiles;
  const int64_t shown = std::min<int64_t>(c.inputs.size(0), 4);
  for (int64_t i = 0; i < shown; ++i) {
    tiles.push_back(c.inputs[i]);
    tiles.push_back(latents.back()[i] / 3.0);  // x_T, scaled to show ±3σ
    for (const auto& r : recons) tiles.push_back(r[i]);
  }
  std::vector<std::string> columns{"original", "x_T / 3"};
  for (int64_t S : o.step_list) columns.push_back("S=" + std::to_string(S));
  write_figure(o.out, tiles, 2 + static_cast<int64_t>(recons.size()),
               "columns: original, x_T (largest S, /3), reconstruction per --steps-list", columns);
}

// The mask: a file (white = fill in) or a built-in half/box. Returns `known` [1, 1, H, W].
torch::Tensor load_known_mask(const std::string& spec, int64_t size) {
  auto hole = torch::zeros({size, size});
  const int64_t half = size / 2, q = size / 4;
  if (spec == "left") hole.narrow(1, 0, half).fill_(1);
  else if (spec == "right") hole.narrow(1, half, size - half).fill_(1);
  else if (spec == "top") hole.narrow(0, 0, half).fill_(1);
  else if (spec == "bottom") hole.narrow(0, half, size - half).fill_(1);
  else if (spec == "center") hole.narrow(0, q, size - 2 * q).narrow(1, q, size - 2 * q).fill_(1);
  else {
    auto m = load_image_u8(spec, 1, 0);
    if (m.size(1) != size || m.size(2) != size) {
      throw std::runtime_error("mask '" + spec + "' is " + std::to_string(m.size(2)) + "×" + std::to_string(m.size(1)) +
                               ", but the image is " + std::to_string(size) + "×" + std::to_string(size));
    }
    hole = (m[0] >= 128).to(torch::kFloat);
  }
  return (1 - hole).view({1, 1, size, size});
}

// An inpainting model (--image-cond inpaint) draws x_0 ~ p(x_0 | c), c = [x ⊙ m, m], and the known
// pixels are pasted back; an unconditional model inpaints by RePaint. Both report the PSNR inside
// the hole against the original and the time taken, so that the two compare on the same images.
void run_inpaint(const EditOptions& o) {
  if (o.mask.empty()) throw std::runtime_error("inpaint: give --mask FILE.png (white = fill in) or left|right|top|bottom|center");
  auto c = open_edit(o, 1);
  const auto& condition = c.pipeline.info().image_condition;
  if (condition && condition->kind != ImageConditionKind::inpaint) {
    throw std::runtime_error("inpaint: '" + o.checkpoint + "' was trained for " + to_string(condition->kind) +
                             "; inpaint with an inpainting model (--image-cond inpaint) or an unconditional one");
  }
  if (!condition && o.guidance > 0) {
    throw std::runtime_error(
        "--guidance needs an inpainting model (train --image-cond inpaint); RePaint, with an "
        "unconditional model, takes none");
  }
  auto known = load_known_mask(o.mask, c.pipeline.info().data.image_size).to(c.inputs.device());
  const auto start = std::chrono::steady_clock::now();
  torch::Tensor result;
  std::string method;
  if (condition) {
    result = known * c.inputs + (1 - known) * generate_under(o, c, inpaint_condition(c.inputs, known), "inpaint");
    method = "the inpainting model" + (o.guidance > 0 ? ", guidance " + fixed(o.guidance, 2) : std::string());
  } else {
    int64_t steps = 0;
    auto sampler = make_sampler_from_flags(o.sampler, c.pipeline, steps);
    InpaintOptions io;
    io.steps = steps;
    io.resample = o.resample;
    io.clip_x0 = clip_x0_of(o.sampler, c.pipeline.info().sampling);
    c.track_progress(o, "inpaint", sampler->evaluations(steps) * (1 + o.resample));
    result = inpaint(c.pipeline.diffusion, *sampler, c.net, c.inputs, known, io, c.gen);
    c.finish_progress();
    method = "RePaint, " + std::to_string(o.resample) + " resampling round(s)";
  }
  const double seconds = seconds_since(start);
  const auto hole_psnr = psnr(result.clamp(-1, 1), c.inputs, 1 - known);
  for (int64_t i = 0; i < c.inputs.size(0); ++i)
    std::printf("image %lld: PSNR inside the hole %.2f dB\n", static_cast<long long>(i), hole_psnr[i].item<double>());
  std::printf("%s: %lld image(s), mean PSNR inside the hole %.2f dB, %.1f s\n", method.c_str(),
              static_cast<long long>(c.inputs.size(0)), hole_psnr.mean().item<double>(), seconds);
  print_cfid(o, c, {{"the results", result}});
  std::vector<torch::Tensor> tiles;
  auto shown = c.inputs * known + (1 - known) * 0.0;  // the hole in mid grey
  const int64_t rows = figure_rows(o, c.inputs.size(0));
  for (int64_t i = 0; i < rows; ++i)
    for (const auto& x : {c.inputs[i], shown[i], result[i]}) tiles.push_back(x);
  write_figure(o.out, tiles, 3, "columns: original, known pixels, result", {"original", "known", "result"});
}

// Super-resolution by a model trained for it: held-out images (--test-index, --image) shrunk by
// its factor (the mean of each f×f block), or low-resolution files (--low-res), upscaled; bicubic
// interpolation beside it, and the PSNR of both against the originals where there are originals.
void run_upscale(const EditOptions& o) {
  auto c = open_edit(o, o.low_res.empty() ? 1 : 0);
  const auto& info = c.pipeline.info();
  if (!info.image_condition || info.image_condition->kind != ImageConditionKind::super_resolution) {
    throw std::runtime_error("upscale: '" + o.checkpoint +
                             "' is no super-resolution model (train one with --image-cond super-resolution)");
  }
  const int64_t size = info.data.image_size, factor = info.image_condition->factor, small = size / factor;
  std::vector<torch::Tensor> lows;
  if (c.inputs.defined()) lows.push_back(downsample_mean(c.inputs, factor));
  const auto device = c.inputs.defined() ? c.inputs.device() : c.pipeline.compute.device;
  for (const auto& path : o.low_res) {
    const auto image = load_image_u8(path, static_cast<int>(info.data.channels), /*size=*/0);
    if (image.size(1) != small || image.size(2) != small) {
      throw std::runtime_error("--low-res '" + path + "' is " + std::to_string(image.size(2)) + "×" +
                               std::to_string(image.size(1)) + "; this model upscales " + std::to_string(small) + "×" +
                               std::to_string(small) + " images ×" + std::to_string(factor));
    }
    lows.push_back(from_uint8(image).unsqueeze(0).to(device));
  }
  const auto low = torch::cat(lows);
  const auto bicubic = upsample_bicubic(low, size);
  const auto start = std::chrono::steady_clock::now();
  const auto result = generate_under(o, c, bicubic, "upscale").clamp(-1, 1);
  const double seconds = seconds_since(start);
  const int64_t originals = c.inputs.defined() ? c.inputs.size(0) : 0;
  if (originals > 0) {
    const auto p_bicubic = psnr(bicubic.narrow(0, 0, originals), c.inputs);
    const auto p_model = psnr(result.narrow(0, 0, originals), c.inputs);
    for (int64_t i = 0; i < originals; ++i) {
      std::printf("image %lld: PSNR bicubic %.2f dB, model %.2f dB\n", static_cast<long long>(i),
                  p_bicubic[i].item<double>(), p_model[i].item<double>());
    }
    std::printf("×%lld super-resolution of %lld image(s): mean PSNR bicubic %.2f dB, model %.2f dB, %.1f s\n",
                static_cast<long long>(factor), static_cast<long long>(originals), p_bicubic.mean().item<double>(),
                p_model.mean().item<double>(), seconds);
  }
  print_cfid(o, c, {{"bicubic", bicubic}, {"the model's results", result}});
  namespace F = torch::nn::functional;
  const auto blocky = F::interpolate(low, F::InterpolateFuncOptions()
                                              .size(std::vector<int64_t>{size, size})
                                              .mode(torch::kNearest));  // the low resolution as it is
  std::vector<torch::Tensor> tiles;
  const int64_t rows = figure_rows(o, low.size(0));
  for (int64_t i = 0; i < rows; ++i) {
    for (const auto& x : {blocky[i], bicubic[i], result[i]}) tiles.push_back(x);
    tiles.push_back(i < originals ? c.inputs[i] : torch::zeros_like(result[i]));
  }
  write_figure(o.out, tiles, 4, "columns: low resolution, bicubic, model, original",
               {std::to_string(small) + "x" + std::to_string(small), "bicubic", "model", "original"});
}

void run_interpolate(const EditOptions& o) {
  auto c = open_edit(o, 2);
  if (c.inputs.size(0) != 2) throw std::runtime_error("interpolate: give exactly two images");
  const auto spacing = sampler_config_of(o.sampler, c.pipeline.info().sampling).spacing;
  const int64_t S = o.sampler.steps > 0 ? o.sampler.steps : 50;
  c.track_progress(o, "interpolate", 3 * S);  // invert both, decode the slerp and the straight line
  auto x_T = ddim_invert(c.pipeline.diffusion, c.net, c.inputs, S, spacing);
  std::vector<torch::Tensor> lerp_latents, slerp_latents;
  for (int64_t k = 0; k < o.frames; ++k) {
    const double lambda = o.frames == 1 ? 0.0 : static_cast<double>(k) / static_cast<double>(o.frames - 1);
    slerp_latents.push_back(slerp(x_T[0], x_T[1], lambda));
    lerp_latents.push_back((1 - lambda) * x_T[0] + lambda * x_T[1]);
  }
  auto decoded_slerp = ddim_decode(c.pipeline.diffusion, c.net, torch::stack(slerp_latents), S, spacing).clamp(-1, 1);
  auto decoded_lerp = ddim_decode(c.pipeline.diffusion, c.net, torch::stack(lerp_latents), S, spacing).clamp(-1, 1);
  c.finish_progress();
  std::vector<torch::Tensor> tiles;
  std::vector<std::string> columns;
  for (int64_t k = 0; k < o.frames; ++k) {
    tiles.push_back(decoded_slerp[k]);
    columns.push_back(fixed(static_cast<double>(k) / static_cast<double>(o.frames - 1), 2));
  }
  for (int64_t k = 0; k < o.frames; ++k) tiles.push_back(decoded_lerp[k]);
  write_figure(o.out, tiles, o.frames, "rows: slerp, then linear interpolation of the inverted latents", columns,
               {"slerp", "lerp"});
}

void run_mix(const EditOptions& o) {
  auto c = open_edit(o, 2);
  if (c.inputs.size(0) != 2) throw std::runtime_error("mix: give exactly two images");
  const int64_t T = c.pipeline.diffusion.timesteps();
  int64_t unused = 0;
  auto sampler = make_sampler_from_flags(o.sampler, c.pipeline, unused);
  std::vector<torch::Tensor> tiles;
  std::vector<std::string> rows, columns;
  for (double lambda : mixture_weights(o.frames)) columns.push_back(fixed(lambda, 2));
  int64_t evaluations = 0;
  for (int64_t t1 : o.ts) {
    if (t1 < 1 || t1 > T) throw std::runtime_error("--ts: " + std::to_string(t1) + " outside [1, " + std::to_string(T) + "]");
    evaluations += sampler->evaluations(edit_steps(o, t1 - 1));
  }
  c.track_progress(o, "mix", evaluations);
  for (int64_t t1 : o.ts) {
    rows.push_back("t=" + std::to_string(t1));
    const auto mixed =
        denoise_mixtures(c.pipeline.diffusion, *sampler, c.net, c.inputs[0], c.inputs[1], o.frames, t1 - 1,
                         edit_steps(o, t1 - 1), clip_x0_of(o.sampler, c.pipeline.info().sampling), c.gen);
    for (int64_t k = 0; k < o.frames; ++k) tiles.push_back(mixed[k]);
  }
  c.finish_progress();
  write_figure(o.out, tiles, o.frames, "rows: t; columns: weight of the second image in the mixture", columns, rows);
}

CLI::App* add_edit_mode(CLI::App& edit, const std::string& name, const std::string& help,
                        const std::shared_ptr<EditOptions>& o) {
  auto* cmd = edit.add_subcommand(name, help);
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors, or a diffusers folder")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--image", o->images, "Input image file(s) (PNG/JPEG of the model's size and channels)");
  cmd->add_option("--test-index", o->test_indices,
                  "Input image(s) from the checkpoint's test split, by index: 3, 0-31, or a list 0,5,9-12")
      ->delimiter(',');
  cmd->add_option("--out", o->out, "Figure (PNG)")->check(writable_output_file());
  cmd->add_option("--seed", o->seed, "Random seed")->capture_default_str();
  cmd->add_flag(
      "--no-progress", [o](int64_t) { o->progress = false; }, "No progress bar");
  add_sampler_options(*cmd, o->sampler);
  add_compute_options(*cmd, o->compute);
  add_cuda_graph_option(*cmd, o->compute);
  return cmd;
}

}  // namespace

void add_edit_command(CLI::App& app) {
  auto* edit =
      app.add_subcommand("edit", "Edit real images: sdedit, sweep, invert, inpaint, upscale, interpolate, mix");
  edit->require_subcommand(1);
  auto o = std::make_shared<EditOptions>();

  auto* sdedit = add_edit_mode(*edit, "sdedit", "Noise images to x_t with q(x_t|x_0), then denoise them", o);
  sdedit->add_option("--t", o->t, "Noise level as a 1-based timestep (1..T)")->check(positive_number());
  sdedit->add_option("--strength", o->strength, "Noise level as a fraction of T, in (0, 1]");
  sdedit->callback([o] { run_sdedit(*o); });

  auto* sweep = add_edit_mode(*edit, "sweep", "Noise-and-denoise at several t: MSE/PSNR table and figure", o);
  sweep->add_option("--ts", o->ts, "Timesteps (1-based)")->delimiter(',')->capture_default_str();
  sweep->callback([o] { run_sweep(*o); });

  auto* invert = add_edit_mode(*edit, "invert", "DDIM inversion: x_0 -> x_T -> x_0, PSNR against steps", o);
  invert->add_option("--steps-list", o->step_list, "DDIM steps to try")->delimiter(',')->capture_default_str();
  invert->callback([o] { run_invert(*o); });

  auto* inpaint_cmd = add_edit_mode(*edit, "inpaint", "Fill the white part of a mask, keeping the rest", o);
  inpaint_cmd->add_option("--mask", o->mask, "Mask PNG (white = fill in) or left|right|top|bottom|center");
  inpaint_cmd->add_option("--resample", o->resample, "RePaint: extra back-and-forth rounds per step")
      ->check(CLI::Range(0, 20))
      ->capture_default_str();
  inpaint_cmd->add_option("--guidance", o->guidance, "An inpainting model: classifier-free guidance weight w")
      ->check(guidance_range())
      ->capture_default_str();
  inpaint_cmd->add_flag("--cfid", o->cfid, "Also the cFID of the results against the test split (many --test-index)");
  inpaint_cmd->callback([o] { run_inpaint(*o); });

  auto* upscale = add_edit_mode(*edit, "upscale", "Super-resolution by a model trained for it, beside bicubic", o);
  upscale->add_option("--low-res", o->low_res, "Low-resolution image file(s) to upscale (the model's size / factor)");
  upscale->add_option("--guidance", o->guidance, "Classifier-free guidance weight w")
      ->check(guidance_range())
      ->capture_default_str();
  upscale->add_flag("--cfid", o->cfid, "Also the cFID of bicubic's and the model's results against the test split");
  upscale->callback([o] { run_upscale(*o); });

  auto* interp = add_edit_mode(*edit, "interpolate", "Slerp between two inverted images, decoded with DDIM eta 0", o);
  interp->add_option("--frames", o->frames, "Images along the path")->check(CLI::Range(2, 64))->capture_default_str();
  interp->callback([o] { run_interpolate(*o); });

  auto* mix = add_edit_mode(*edit, "mix", "Denoise pixel mixtures of two images from intermediate t", o);
  mix->add_option("--ts", o->ts, "Timesteps (1-based)")->delimiter(',')->capture_default_str();
  mix->add_option("--frames", o->frames, "Mixture weights from 0 to 1")->check(CLI::Range(1, 64))->capture_default_str();
  mix->callback([o] { run_mix(*o); });
}

}  // namespace diffuse::cli
