#include "diffuse/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>

#include "diffuse/diffusion/elbo.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/ema.h"
#include "diffuse/util/progress.h"

namespace fs = std::filesystem;

namespace diffuse {

double learning_rate(const TrainConfig& c, int64_t step) {
  const int64_t warmup = std::max<int64_t>(c.warmup, 1);
  if (step < warmup) return c.lr * static_cast<double>(step + 1) / static_cast<double>(warmup);  // linear warm-up
  if (!c.cosine_decay || c.steps <= warmup) return c.lr;
  // ½ (1 + cos(π p)), p = progress through the steps after warm-up
  const double p = static_cast<double>(step - warmup) / static_cast<double>(c.steps - warmup);
  return c.lr * 0.5 * (1.0 + std::cos(M_PI * std::min(p, 1.0)));
}

namespace {

torch::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// Everything that --resume needs, in one safetensors file written atomically.
struct TrainState {
  static std::string path(const std::string& dir) { return dir + "/train_state.safetensors"; }

  static void save(const std::string& dir, const CheckpointInfo& info, const UNet& model, const UNet& ema_model,
                   AdamW& opt, const Ema& ema, const BatchLoader& loader) {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (auto& [name, t] : named_state(*model)) tensors.emplace_back("model/" + name, t);
    for (auto& [name, t] : named_state(*ema_model)) tensors.emplace_back("ema/" + name, t);
    for (size_t i = 0; i < opt.first_moments().size(); ++i) {
      tensors.emplace_back("adam_m/" + std::to_string(i), opt.first_moments()[i]);
      tensors.emplace_back("adam_v/" + std::to_string(i), opt.second_moments()[i]);
    }
    tensors.emplace_back("rng/cpu", cpu_rng_state());
    tensors.emplace_back("loader/order", loader.order().defined() ? loader.order() : torch::empty({0}, torch::kLong));
    auto metadata = checkpoint_metadata(info);
    metadata["adam_step"] = std::to_string(opt.step_count());
    metadata["ema_updates"] = std::to_string(ema.updates());
    metadata["loader_cursor"] = std::to_string(loader.cursor());
    save_safetensors(path(dir), tensors, metadata);
  }
};

void append_log(const std::string& path, int64_t step, double loss, double lr, double ips, double elapsed) {
  const bool fresh = !fs::exists(path);
  std::ofstream out(path, std::ios::app);
  if (!out) throw std::runtime_error("cannot append to '" + path + "'");
  if (fresh) out << "step,loss,lr,images_per_second,elapsed_seconds\n";
  out << step << ',' << std::setprecision(6) << loss << ',' << lr << ',' << ips << ',' << elapsed << '\n';
}

void write_preview(const std::string& dir, int64_t step, const GaussianDiffusion& diffusion, UNet& ema_model,
                   const DataInfo& data, int64_t n, torch::Device device) {
  ema_model->eval();
  // A fixed generator of its own: previews are comparable across steps and do not disturb training's RNG.
  auto gen = at::detail::createCPUGenerator(/*seed_in=*/1234);
  auto x_T = torch::randn({n, data.channels, data.image_size, data.image_size}, gen).to(device);
  DdimSampler sampler(diffusion.schedule(), TimestepSpacing::leading, /*eta=*/0.0);
  // Class-conditional models: one row per class, no guidance.
  const int64_t classes = ema_model->config().num_classes;
  ClassRows rows{torch::Tensor(), 0};
  if (classes > 0) rows = class_rows(n, classes);
  Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) {
    return ema_model->forward(x, t, rows.labels.defined() ? rows.labels.to(x.device()) : torch::Tensor());
  };
  auto images = sample_loop(diffusion, sampler, net, x_T, SampleOptions{50, true}, gen);
  std::ostringstream name;
  name << dir << "/preview_" << std::setw(6) << std::setfill('0') << step << ".png";
  save_grid_png(name.str(), images, rows.per_row);
}

}  // namespace

TrainResult train(const TrainConfig& config, CheckpointInfo info, const Dataset& data, torch::Device device) {
  if (config.out_dir.empty()) throw std::invalid_argument("train: an output directory is required");
  if (config.steps < 1 || config.batch_size < 1) throw std::invalid_argument("train: steps and batch size must be positive");
  fs::create_directories(config.out_dir);

  const std::string state_path = TrainState::path(config.out_dir);
  std::optional<SafetensorsContent> state;
  if (config.resume) {
    if (!fs::exists(state_path)) throw std::runtime_error("--resume: no '" + state_path + "' to resume from");
    state = load_safetensors(state_path);
    info = checkpoint_info_from_metadata(state->metadata, state_path);
  } else if (fs::exists(state_path)) {
    throw std::runtime_error("'" + config.out_dir + "' already holds a training run; pass --resume to continue it "
                             "or choose another --out");
  }
  if (info.data.channels != data.channels() || info.data.image_size != data.image_size()) {
    throw std::runtime_error("data '" + data.name + "' has " + std::to_string(data.channels()) + "×" +
                             std::to_string(data.image_size()) + "² images, but the model expects " +
                             std::to_string(info.data.channels) + "×" + std::to_string(info.data.image_size) + "²");
  }

  torch::manual_seed(config.seed);
  UNet model(info.model), ema_model(info.model);
  model->to(device);
  ema_model->to(device);
  model->set_memory_format(config.memory_format);
  ema_model->set_memory_format(config.memory_format);
  DataParallel* dp = config.data_parallel;
  const bool rank0 = !dp || dp->env().rank == 0;
  if (dp && config.resume) throw std::runtime_error("--resume with several processes is not supported yet");
  if (dp) dp->broadcast_from_rank0(model->parameters());  // every rank starts from rank 0's weights
  {
    torch::NoGradGuard no_grad;
    auto src = model->parameters();
    auto dst = ema_model->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  for (auto& p : ema_model->parameters()) p.set_requires_grad(false);
  GaussianDiffusion diffusion(NoiseSchedule(info.schedule), info.objective, device);
  AdamW optimizer(model->parameters(), AdamWOptions{0.9, 0.999, 1e-8, config.weight_decay});
  Ema ema(config.ema_decay);
  // Each rank reads every W-th image from its rank on, and draws its own t and noise.
  const Dataset shard = dp ? shard_of(data, dp->env().rank, dp->env().world_size) : Dataset{};
  BatchLoader loader(dp ? shard : data, config.batch_size, device);
  if (dp && dp->env().rank > 0) torch::manual_seed(config.seed + 1000003ull * static_cast<uint64_t>(dp->env().rank));

  int64_t step = 0;
  if (state) {
    load_named_state(*model, *state, "model/");
    load_named_state(*ema_model, *state, "ema/");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < optimizer.first_moments().size(); ++i) {
      optimizer.first_moments()[i].copy_(state->at("adam_m/" + std::to_string(i)));
      optimizer.second_moments()[i].copy_(state->at("adam_v/" + std::to_string(i)));
    }
    optimizer.set_step_count(std::stoll(state->metadata.at("adam_step")));
    ema.set_updates(std::stoll(state->metadata.at("ema_updates")));
    const auto& order = state->at("loader/order");
    if (order.numel() > 0) loader.restore(order, std::stoll(state->metadata.at("loader_cursor")));
    set_cpu_rng_state(state->at("rng/cpu"));
    step = info.step;
    if (step >= config.steps) {
      throw std::runtime_error("--resume: the run is already at step " + std::to_string(step) +
                               "; pass a larger --steps to continue");
    }
  }

  auto save_all = [&](int64_t at_step) {
    if (!rank0) return;
    info.step = at_step;
    TrainState::save(config.out_dir, info, model, ema_model, optimizer, ema, loader);
    save_checkpoint(config.out_dir + "/checkpoint.safetensors", ema_model, info);
  };

  const std::string log_path = config.out_dir + "/log.csv";
  ProgressBar bar("train", config.steps, step, config.progress && rank0);
  TrainResult result;
  double window_loss = 0.0;  // sum of the window's losses, as last read back
  auto window_loss_sum = torch::zeros({}, torch::dtype(torch::kFloat32).device(device));
  int64_t window_steps = 0;
  TrainStep train_step(model, ema_model, diffusion, optimizer, ema,
                       TrainStepOptions{config.loss, config.grad_clip, config.label_dropout, config.precision});
  if (dp) train_step.set_gradient_hook([dp](const std::vector<torch::Tensor>& params) { dp->average_gradients(params); });
  auto window_start = std::chrono::steady_clock::now();
  model->train();
  while (step < config.steps) {
    if (config.stop && config.stop->load()) {
      result.interrupted = true;
      break;
    }
    auto batch = loader.next();
    const int64_t B = batch.x0.size(0);
    const double lr = learning_rate(config, step);
    window_loss_sum += train_step(batch.x0, batch.labels, lr);
    ++step;
    ++window_steps;
    // The loss is read back (a host sync) every step on the CPU, where that is free, and only when
    // logging on a GPU; a NaN stops the run before the next checkpoint is written either way.
    // Several ranks read the mean over all of them: a NaN on one rank then stops every rank at
    // the same step (one rank stopping alone would leave the others waiting in the next all-reduce).
    const bool log_now = step % config.log_every == 0 || step == config.steps;
    const bool save_now = config.checkpoint_every > 0 && step % config.checkpoint_every == 0;
    if (!device.is_cuda() || log_now || save_now) {
      window_loss = dp ? dp->mean_over_ranks(window_loss_sum.item<double>()) : window_loss_sum.item<double>();
      if (!std::isfinite(window_loss)) {
        throw std::runtime_error("loss is " + std::to_string(window_loss) + " before step " + std::to_string(step) +
                                 "; stopping without overwriting the last checkpoint (try a lower --lr)");
      }
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
    std::ostringstream info_text;
    info_text << "loss " << std::fixed << std::setprecision(4) << window_loss / std::max<int64_t>(window_steps, 1) << "  " << std::setprecision(0)
              << (secs > 0 ? static_cast<double>(window_steps * B) / secs : 0.0) << " img/s";
    bar.update(step, info_text.str());
    if (log_now) {
      result.loss = window_loss / window_steps;
      if (rank0) append_log(log_path, step, result.loss, lr, static_cast<double>(window_steps * B) / secs, bar.elapsed_seconds());
      window_loss = 0.0;
      window_loss_sum.zero_();
      window_steps = 0;
      window_start = std::chrono::steady_clock::now();
    }
    if (save_now && step != config.steps) save_all(step);
    if (rank0 && config.preview_every > 0 && step % config.preview_every == 0 && step != config.steps) {
      write_preview(config.out_dir, step, diffusion, ema_model, info.data, config.preview_n, device);
      model->train();
    }
  }
  if (window_steps > 0) result.loss = window_loss_sum.item<double>() / window_steps;
  save_all(step);
  if (rank0 && !result.interrupted) write_preview(config.out_dir, step, diffusion, ema_model, info.data, config.preview_n, device);
  bar.finish(result.interrupted ? "interrupted" : "done");
  result.step = step;
  result.seconds = bar.elapsed_seconds();
  return result;
}

}  // namespace diffuse
