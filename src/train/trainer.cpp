#include "diffuse/train/trainer.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "diffuse/diffusion/elbo.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/ema.h"
#include "diffuse/train/ema_snapshots.h"
#include "diffuse/util/cpu_sharing.h"
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

int64_t fitted_steps(double minutes, int64_t at, double elapsed, double seconds_per_step, int64_t most) {
  const double remaining = minutes * 60.0 - elapsed;
  int64_t steps = at;
  if (remaining > 0 && seconds_per_step > 0) {
    steps += static_cast<int64_t>(std::min(0.97 * remaining / seconds_per_step, static_cast<double>(most)));
  }
  if (steps > 100) steps -= steps % 10;
  return std::clamp(steps, at, std::max(at, most));
}

StepBudget::StepBudget(double minutes, int64_t most_steps, int64_t first_step)
    : minutes_(minutes),
      most_(most_steps),
      steps_(most_steps),
      active_(minutes > 0.0 && first_step < kFitFrom + kFitSteps),
      fit_from_(std::max(first_step, kFitFrom)),
      last_fit_step_(fit_from_) {}

std::optional<StepBudget::Fit> StepBudget::after_step(int64_t step, double elapsed) {
  if (!active_) return std::nullopt;
  if (step == fit_from_) {
    last_fit_seconds_ = elapsed;
    return std::nullopt;
  }
  const int64_t tenth = static_cast<int64_t>(elapsed / (minutes_ * 6.0));  // tenths of the budget gone
  const bool first = step == fit_from_ + kFitSteps && fitted_tenth_ < 0;
  const bool refit =
      fitted_tenth_ >= 0 && step >= last_fit_step_ + kFitSteps && tenth > fitted_tenth_ && tenth <= kLastRefit;
  if (!first && !refit) return std::nullopt;
  Fit fit;
  fit.timed_from = last_fit_step_, fit.timed_to = step;
  fit.seconds_per_step = (elapsed - last_fit_seconds_) / static_cast<double>(step - last_fit_step_);
  // A refit takes the slower of its window and the refit's before: a neighbour that pauses for one
  // window does not make the rest of the run overshoot. (The first window, which times the kernels
  // and fills the caches, is slower than the rest and never taken again.)
  const Fit window = fit;
  if (previous_window_ && previous_window_->seconds_per_step > fit.seconds_per_step) fit = *previous_window_;
  fit.steps = fitted_steps(minutes_, step, elapsed, fit.seconds_per_step, most_);
  if (!first) previous_window_ = window;
  last_fit_step_ = step, last_fit_seconds_ = elapsed, fitted_tenth_ = tenth;
  if (fit.steps == steps_) return std::nullopt;
  steps_ = fit.steps;
  return fit;
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

// A power-function EMA kept beside the sampled one, whose snapshots `diffuse ema` combines.
struct EmaTrack {
  UNet model;
  Ema ema;
};

std::string track_prefix(size_t i) { return "ema_track_" + std::to_string(i) + "/"; }

// Everything that --resume needs, in one safetensors file written atomically by rank 0; with
// several processes, each other rank's own part (its shard's order and cursor, its random state)
// in a file of its own beside it.
struct TrainState {
  static constexpr const char* kLossAwareState = "t_importance/state";  // LossAwareTimesteps::state()
  static std::string path(const std::string& dir) { return dir + "/train_state.safetensors"; }
  static std::string rank_path(const std::string& dir, int rank) {
    return dir + "/train_state.rank" + std::to_string(rank) + ".safetensors";
  }

  // The settings a resumed run may change, kept so that a resume can say what it changes.
  static nlohmann::json settings_json(const TrainConfig& c) {
    return {{"batch-size", c.batch_size},
            {"lr", c.lr},
            {"warmup", c.warmup},
            {"lr-schedule", c.cosine_decay ? "cosine" : "constant"},
            {"grad-clip", c.grad_clip},
            {"ema-decay", c.ema_decay},
            {"ema-sigma-rel", c.ema_sigma_rel},
            {"ema-snapshot-every", c.ema_snapshot_every},
            {"adam-beta1", c.adam_beta1},
            {"adam-beta2", c.adam_beta2},
            {"weight-decay", c.weight_decay},
            {"label-dropout", c.label_dropout},
            {"loss", to_string(c.loss)},
            {"min-snr-gamma", c.min_snr_gamma},
            {"t-sampling", to_string(c.timestep_sampling.kind)},
            {"log-snr-mean", c.timestep_sampling.log_snr_mean},
            {"log-snr-std", c.timestep_sampling.log_snr_std},
            {"t-importance", c.timestep_sampling.loss_aware},
            {"t-stratified", c.timestep_sampling.stratified},
            {"minutes", c.minutes},
            {"steps", c.steps}};
  }

  static void save(const std::string& dir, const CheckpointInfo& info, const UNet& model, const UNet& ema_model,
                   AdamW& opt, const Ema& ema, const std::vector<EmaTrack>& tracks, const BatchLoader& loader,
                   const TrainConfig& config, const LossAwareTimesteps* loss_aware) {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (auto& [name, t] : named_state(*model)) tensors.emplace_back("model/" + name, t);
    for (auto& [name, t] : named_state(*ema_model)) tensors.emplace_back("ema/" + name, t);
    nlohmann::json track_list = nlohmann::json::array();
    for (size_t i = 0; i < tracks.size(); ++i) {
      for (auto& [name, t] : named_state(*tracks[i].model)) tensors.emplace_back(track_prefix(i) + name, t);
      track_list.push_back({{"gamma", tracks[i].ema.gamma()}, {"updates", tracks[i].ema.updates()}});
    }
    for (size_t i = 0; i < opt.first_moments().size(); ++i) {
      tensors.emplace_back("adam_m/" + std::to_string(i), opt.first_moments()[i]);
      tensors.emplace_back("adam_v/" + std::to_string(i), opt.second_moments()[i]);
    }
    tensors.emplace_back("rng/cpu", cpu_rng_state());
    if (loss_aware) tensors.emplace_back(kLossAwareState, loss_aware->state());
    tensors.emplace_back("loader/order", loader.order().defined() ? loader.order() : torch::empty({0}, torch::kLong));
    auto metadata = checkpoint_metadata(info);
    metadata["adam_step"] = std::to_string(opt.step_count());
    metadata["ema_updates"] = std::to_string(ema.updates());
    if (!tracks.empty()) metadata["ema_tracks"] = track_list.dump();
    metadata["loader_cursor"] = std::to_string(loader.cursor());
    metadata["train"] = settings_json(config).dump();
    metadata["world_size"] = std::to_string(config.data_parallel ? config.data_parallel->env().world_size : 1);
    save_safetensors(path(dir), tensors, metadata);
  }

  // A rank's own part (rank ≥ 1): what differs between ranks.
  static void save_rank(const std::string& dir, int rank, int64_t step, const BatchLoader& loader) {
    std::vector<std::pair<std::string, torch::Tensor>> tensors{
        {"rng/cpu", cpu_rng_state()},
        {"loader/order", loader.order().defined() ? loader.order() : torch::empty({0}, torch::kLong)}};
    save_safetensors(rank_path(dir, rank), tensors,
                     {{"step", std::to_string(step)}, {"loader_cursor", std::to_string(loader.cursor())}});
  }
};

// An AdamW moment from the train state: the parameter's shape (no broadcasting), finite, and for
// the second moment v ≥ 0 (a negative v makes √v NaN at the next step).
void restore_moment(torch::Tensor& dst, const SafetensorsContent& state, const std::string& name, bool second) {
  const auto& src = state.at(name);
  if (src.sizes() != dst.sizes() || !src.is_floating_point()) {
    std::ostringstream msg;
    msg << "'" << state.source << "': tensor '" << name << "' is " << src.scalar_type() << " " << src.sizes()
        << ", the parameter's moment is float " << dst.sizes();
    throw std::runtime_error(msg.str());
  }
  check_tensor_values(src, name, state.source);
  if (second && (src < 0).any().item<bool>()) {
    throw std::runtime_error("'" + state.source + "': tensor '" + name + "' (a second moment) has negative entries");
  }
  dst.copy_(src);
}

// The loader's saved order must be a permutation of the data set's indices, its cursor inside it.
void check_loader_order(const torch::Tensor& order, int64_t cursor, int64_t images, const std::string& source) {
  const bool permutation = order.dim() == 1 && order.numel() == images && !order.is_floating_point() &&
                           torch::equal(std::get<0>(order.to(torch::kLong).sort()), torch::arange(images));
  if (!permutation) {
    throw std::runtime_error("'" + source + "': loader/order is not a permutation of the data set's " +
                             std::to_string(images) + " images (another data set, or a damaged file)");
  }
  if (cursor > images) {
    throw std::runtime_error("'" + source + "': loader_cursor " + std::to_string(cursor) + " is beyond the " +
                             std::to_string(images) + " images");
  }
}

// On resume from `step`: the log's rows after it (written before the run stopped, and about to
// be written again) are dropped, so that every step appears once.
void truncate_log_after(const std::string& path, int64_t step) {
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  for (bool header = true; std::getline(in, line); header = false) {
    if (header || line.empty() || std::strtoll(line.c_str(), nullptr, 10) <= step) kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

void append_log(const std::string& path, int64_t step, double loss, double lr, double ips, double elapsed) {
  const bool fresh = !fs::exists(path);
  std::ofstream out(path, std::ios::app);
  if (!out) throw std::runtime_error("cannot append to '" + path + "'");
  if (fresh) out << "step,loss,lr,images_per_second,elapsed_seconds\n";
  out << step << ',' << std::setprecision(6) << loss << ',' << lr << ',' << ips << ',' << elapsed << '\n';
}

// What previews show: n images, each under its condition (one row per class for a
// class-conditional model, the data's first captions for a text-conditional one, the conditions of
// its first images for an image-conditional one), per_row a row.
struct PreviewPlan {
  int64_t n = 0, per_row = 0;  // per_row 0: a square-ish grid
  torch::Tensor conditions;    // [n] labels, [n, L] token ids, [n, C', H, W] condition channels, or undefined
};

PreviewPlan plan_previews(const CheckpointInfo& info, const Dataset& conditioned, int64_t n) {
  const UNetConfig& model = info.model;
  if (info.image_condition) {  // the conditions of the data's first images (masks of a generator of their own)
    n = std::min(n, conditioned.size());
    auto gen = at::detail::createCPUGenerator(/*seed_in=*/1234);
    const auto x0 = from_uint8(conditioned.images.narrow(0, 0, n));
    return {n, 0, training_condition(*info.image_condition, x0, gen)};
  }
  if (model.num_classes > 0) {
    const auto rows = class_rows(n, model.num_classes);
    return {n, rows.per_row, rows.labels};
  }
  if (model.text_conditional()) {
    n = std::min(n, conditioned.size());
    return {n, 0, conditioned.labels.narrow(0, 0, n)};
  }
  return {n, 0, torch::Tensor()};
}

void write_preview(const std::string& dir, int64_t step, const GaussianDiffusion& diffusion, UNet& ema_model,
                   const DataInfo& data, const PreviewPlan& plan, torch::Device device) {
  ema_model->eval();
  // A fixed generator of its own: previews are comparable across steps and do not disturb training's RNG.
  auto gen = at::detail::createCPUGenerator(/*seed_in=*/1234);
  auto x_T = torch::randn({plan.n, data.channels, data.image_size, data.image_size}, gen).to(device);
  DdimSampler sampler(diffusion.schedule(), TimestepSpacing::leading, /*eta=*/0.0);
  // no guidance: the conditional network as it is
  Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) {
    return ema_model->forward(x, t, plan.conditions.defined() ? plan.conditions.to(x.device()) : torch::Tensor());
  };
  auto images = sample_loop(diffusion, sampler, net, x_T, SampleOptions{50, true}, gen);
  std::ostringstream name;
  name << dir << "/preview_" << std::setw(6) << std::setfill('0') << step << ".png";
  save_grid_png(name.str(), images, plan.per_row);
}

// The snapshot EMAs of a run that kept them from its first step: their weights and update counts.
void restore_ema_tracks(std::vector<EmaTrack>& tracks, const SafetensorsContent& state, const std::string& dir) {
  if (state.metadata.count("ema_tracks") == 0) {
    throw std::runtime_error("--ema-snapshot-every: the run in '" + dir +
                             "' kept no snapshot EMAs from its start, and they cannot begin mid-run (resume without "
                             "it, or start a new run)");
  }
  nlohmann::json saved;
  try {
    saved = nlohmann::json::parse(state.metadata.at("ema_tracks"));
  } catch (const nlohmann::json::exception&) {
    throw std::runtime_error("'" + state.source + "': \"ema_tracks\" is not JSON");
  }
  if (!saved.is_array() || saved.size() != tracks.size()) {
    throw std::runtime_error("'" + state.source + "': \"ema_tracks\" is not a list of " +
                             std::to_string(tracks.size()) + " snapshot EMAs");
  }
  for (size_t i = 0; i < tracks.size(); ++i) {
    const auto& entry = saved[i];
    if (!entry.is_object() || !entry.contains("gamma") || !entry["gamma"].is_number() || !entry.contains("updates") ||
        !entry["updates"].is_number_unsigned() || entry["gamma"].get<double>() != tracks[i].ema.gamma()) {
      throw std::runtime_error("'" + state.source + "': snapshot EMA " + std::to_string(i) + " is " + entry.dump() +
                               ", not γ = " + std::to_string(tracks[i].ema.gamma()) + " with a count of updates");
    }
    load_named_state(*tracks[i].model, state, track_prefix(i));
    tracks[i].ema.set_updates(entry["updates"].get<int64_t>());
  }
}

}  // namespace

TrainResult train(const TrainConfig& requested, CheckpointInfo info, const Dataset& data, torch::Device device) {
  TrainConfig config = requested;  // its steps fitted to a time budget along the way
  if (config.out_dir.empty()) throw std::invalid_argument("train: an output directory is required");
  if (config.steps < 1 || config.batch_size < 1) throw std::invalid_argument("train: steps and batch size must be positive");
  if (!(config.minutes >= 0.0 && std::isfinite(config.minutes))) {  // NaN fails too
    throw std::invalid_argument("train: minutes must be a finite number ≥ 0, got " + std::to_string(config.minutes));
  }
  if (config.minutes > 0.0 && config.data_parallel) {  // each process would time its own steps
    throw std::invalid_argument("train: a time budget (--minutes) is for one process; pass --steps with several");
  }
  check_timestep_sampling(config.timestep_sampling);
  if (config.timestep_sampling.loss_aware && config.data_parallel) {  // each process would draw from its own losses
    throw std::invalid_argument("train: t drawn by the loss (--t-importance) is for one process");
  }
  for (const auto& [name, beta] :
       {std::pair{"adam_beta1", config.adam_beta1}, std::pair{"adam_beta2", config.adam_beta2}}) {
    if (!(beta >= 0.0 && beta < 1.0)) {  // NaN fails too
      throw std::invalid_argument(std::string("train: ") + name + " must be in [0, 1), got " + std::to_string(beta));
    }
  }
  if (!(config.ema_sigma_rel == 0.0 || is_power_ema_sigma_rel(config.ema_sigma_rel))) {
    throw std::invalid_argument("train: ema_sigma_rel must be 0 (off) or in (0, " +
                                std::to_string(power_ema_max_sigma_rel()) + "], got " +
                                std::to_string(config.ema_sigma_rel));
  }
  if (config.ema_snapshot_every < 0) throw std::invalid_argument("train: ema_snapshot_every must be ≥ 0");
  fs::create_directories(config.out_dir);
  if (const int stale = remove_stale_temporaries(config.out_dir); stale > 0) {
    std::fprintf(stderr, "removed %d temporary file(s) left in '%s' by a run killed while writing\n", stale,
                 config.out_dir.c_str());
  }

  const std::string state_path = TrainState::path(config.out_dir);
  std::optional<SafetensorsContent> state;
  if (config.resume) {
    if (!fs::exists(state_path)) throw std::runtime_error("--resume: no '" + state_path + "' to resume from");
    state = load_safetensors(state_path);
    info = checkpoint_info_from_metadata(state->metadata, state_path);
  } else if (fs::exists(state_path)) {
    throw std::runtime_error("'" + config.out_dir + "' already holds a training run; pass --resume to continue it "
                             "or choose another --out");
  } else if (std::error_code error; config.ema_snapshot_every > 0 && fs::exists(ema_snapshot_dir(config.out_dir)) &&
                                    !fs::is_empty(ema_snapshot_dir(config.out_dir), error)) {
    throw std::runtime_error("'" + ema_snapshot_dir(config.out_dir) +
                             "' holds another run's EMA snapshots; move them away or choose another --out");
  }
  if (info.data.channels != data.channels() || info.data.image_size != data.image_size()) {
    throw std::runtime_error("data '" + data.name + "' has " + std::to_string(data.channels()) + "×" +
                             std::to_string(data.image_size()) + "² images, but the model expects " +
                             std::to_string(info.data.channels) + "×" + std::to_string(info.data.image_size) + "²");
  }

  // A text-conditional model is handed each image's caption as a row of token ids, where a
  // class-conditional one gets its label.
  Dataset with_prompts;
  if (info.model.text_conditional()) {
    if (!data.captioned()) {
      throw std::runtime_error("the model is text-conditional, and data '" + data.name + "' has no captions");
    }
    check_tokenizer_fits(info);
    with_prompts = data;
    with_prompts.labels = info.tokenizer->encode(data.captions);
  }
  const Dataset& conditioned = info.model.text_conditional() ? with_prompts : data;

  // The power-function EMAs that snapshots are taken of, made before the seed is set: their random
  // initialisation (the first update overwrites it, β_1 = 0) must not move the run's random stream.
  std::vector<EmaTrack> tracks;
  if (config.ema_snapshot_every > 0) {
    for (const double sigma_rel : kEmaSnapshotSigmaRels) {
      EmaTrack track{UNet(info.model), Ema::power(power_ema_gamma(sigma_rel))};
      track.model->to(device);
      track.model->set_memory_format(config.memory_format);
      for (auto& p : track.model->parameters()) p.set_requires_grad(false);
      tracks.push_back(std::move(track));  // its first update copies the weights (β_1 = 0)
    }
  }
  torch::manual_seed(config.seed);
  UNet model(info.model), ema_model(info.model);
  model->to(device);
  ema_model->to(device);
  model->set_memory_format(config.memory_format);
  ema_model->set_memory_format(config.memory_format);
  DataParallel* dp = config.data_parallel;
  const bool rank0 = !dp || dp->env().rank == 0;
  if (dp) dp->broadcast_from_rank0(model->parameters());  // every rank starts from rank 0's weights
  {
    torch::NoGradGuard no_grad;
    auto src = model->parameters();
    auto dst = ema_model->parameters();
    for (size_t i = 0; i < src.size(); ++i) dst[i].copy_(src[i]);
  }
  for (auto& p : ema_model->parameters()) p.set_requires_grad(false);
  GaussianDiffusion diffusion(NoiseSchedule(info.schedule), info.objective, device);
  AdamW optimizer(model->parameters(), AdamWOptions{config.adam_beta1, config.adam_beta2, 1e-8, config.weight_decay});
  Ema ema = config.ema_sigma_rel > 0.0 ? Ema::power(power_ema_gamma(config.ema_sigma_rel)) : Ema(config.ema_decay);
  // Each rank reads every W-th image from its rank on, and draws its own t and noise.
  const Dataset shard = dp ? shard_of(conditioned, dp->env().rank, dp->env().world_size) : Dataset{};
  if (config.batch_size > (dp ? shard : data).size()) {
    throw std::runtime_error("--batch-size " + std::to_string(config.batch_size) + " is larger than the " +
                             std::to_string((dp ? shard : data).size()) + " images " +
                             (dp ? "of this process's share of '" : "of '") + data.name + "'");
  }
  BatchLoader loader(dp ? shard : conditioned, config.batch_size, device);
  if (dp && dp->env().rank > 0) torch::manual_seed(config.seed + 1000003ull * static_cast<uint64_t>(dp->env().rank));

  int64_t step = 0;
  if (state) {
    load_named_state(*model, *state, "model/");
    load_named_state(*ema_model, *state, "ema/");
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < optimizer.first_moments().size(); ++i) {
      restore_moment(optimizer.first_moments()[i], *state, "adam_m/" + std::to_string(i), false);
      restore_moment(optimizer.second_moments()[i], *state, "adam_v/" + std::to_string(i), true);
    }
    optimizer.set_step_count(metadata_count(state->metadata, "adam_step", state_path));
    ema.set_updates(metadata_count(state->metadata, "ema_updates", state_path));
    if (!tracks.empty()) restore_ema_tracks(tracks, *state, config.out_dir);
    step = info.step;
    // The run's number of processes: each rank's shard depends on it.
    const int64_t world =
        state->metadata.count("world_size") ? metadata_count(state->metadata, "world_size", state_path) : 1;
    if (world != (dp ? dp->env().world_size : 1)) {
      throw std::runtime_error("--resume: the run in '" + config.out_dir + "' was trained by " + std::to_string(world) +
                               " process(es); resume it with as many (WORLD_SIZE=" + std::to_string(world) + ")");
    }
    // This rank's order, cursor and random state: rank 0's in the run's state, the others' beside it.
    std::optional<SafetensorsContent> own;
    if (!rank0) {
      const auto own_path = TrainState::rank_path(config.out_dir, dp->env().rank);
      if (!fs::exists(own_path)) throw std::runtime_error("--resume: no '" + own_path + "' for this rank");
      own = load_safetensors(own_path);
      const int64_t own_step = metadata_count(own->metadata, "step", own_path);
      if (own_step != step) {
        throw std::runtime_error("--resume: '" + own_path + "' is from step " + std::to_string(own_step) +
                                 ", the run's state from step " + std::to_string(step) +
                                 " (the run stopped while saving): resume is not possible from these files");
      }
    }
    const auto& rank_state = own ? *own : *state;
    const auto& order = rank_state.at("loader/order");
    const int64_t cursor = metadata_count(rank_state.metadata, "loader_cursor", rank_state.source);
    if (order.numel() > 0) {
      check_loader_order(order, cursor, (dp ? shard : data).size(), rank_state.source);
      loader.restore(order, cursor);
    }
    set_cpu_rng_state(rank_state.at("rng/cpu"));
    if (data.name != info.data.name) {
      throw std::runtime_error("--resume: the run in '" + config.out_dir + "' trains on '" + info.data.name +
                               "', not '" + data.name + "'");
    }
    if (state->metadata.count("train")) {  // say what this invocation changes from here on
      const auto before = nlohmann::json::parse(state->metadata.at("train"));
      const auto now = TrainState::settings_json(config);
      for (const auto& [key, value] : now.items()) {
        if (key != "steps" && before.contains(key) && before.at(key) != value) {
          std::fprintf(stderr, "resume: --%s %s (was %s) from step %lld on\n", key.c_str(), value.dump().c_str(),
                       before.at(key).dump().c_str(), static_cast<long long>(step));
        }
      }
    }
    if (step >= config.steps) {
      throw std::runtime_error("--resume: the run is already at step " + std::to_string(step) +
                               "; pass a larger --steps to continue");
    }
  }

  LossAwareTimesteps* loss_aware = nullptr;  // the training step's, once it exists
  auto save_all = [&](int64_t at_step) {
    if (!rank0) {  // the weights are rank 0's to write (every rank holds the same)
      TrainState::save_rank(config.out_dir, dp->env().rank, at_step, loader);
      return;
    }
    // The files on disk stay the last good ones: weights that went NaN or Inf are not saved over them.
    for (const auto* net : {&model, &ema_model}) {
      for (const auto& p : (*net)->named_parameters()) {
        if (!torch::isfinite(p.value()).all().item<bool>()) {
          throw std::runtime_error("training diverged: parameter '" + p.key() + "' holds NaN or Inf at step " +
                                   std::to_string(at_step) + "; nothing was saved over the files in '" +
                                   config.out_dir + "' (resume from the last checkpoint with a lower --lr)");
        }
      }
    }
    info.step = at_step;
    TrainState::save(config.out_dir, info, model, ema_model, optimizer, ema, tracks, loader, config, loss_aware);
    save_checkpoint(config.out_dir + "/checkpoint.safetensors", ema_model, info);
  };

  const PreviewPlan previews = plan_previews(info, conditioned, config.preview_n);
  const std::string log_path = config.out_dir + "/log.csv";
  if (state && rank0) truncate_log_after(log_path, step);
  ProgressBar bar("train", config.steps, step, config.progress && rank0);
  TrainResult result;
  double window_loss = 0.0;  // sum of the window's losses, as last read back
  auto window_loss_sum = torch::zeros({}, torch::dtype(torch::kFloat32).device(device));
  int64_t window_steps = 0;
  TrainStep train_step(model, ema_model, diffusion, optimizer, ema,
                       TrainStepOptions{config.loss, config.min_snr_gamma, config.grad_clip, config.label_dropout,
                                        config.precision, info.image_condition, config.timestep_sampling});
  loss_aware = train_step.loss_aware_timesteps();
  if (loss_aware && state) {  // a run begun without it starts its losses afresh
    if (const auto* saved = state->find(TrainState::kLossAwareState)) loss_aware->load_state(*saved, state->source);
  }
  if (dp) train_step.set_gradient_hook([dp](const std::vector<torch::Tensor>& params) { dp->average_gradients(params); });
  auto window_start = std::chrono::steady_clock::now();
  // A time budget: the steps are fitted early and refitted as the run goes (a run resumed past the
  // first fit keeps its steps).
  StepBudget budget(config.minutes, config.steps, step);
  model->train();
  while (step < config.steps) {
    bool stop = config.stop && config.stop->load();
    // With several processes a signal to one of them stops all at the same step (a rank stopping
    // alone would leave the others waiting in the next all-reduce): asked of every rank each step
    // on the CPU, every kStopPollSteps on a GPU, where reading the answer waits for the device.
    constexpr int64_t kStopPollSteps = 16;
    if (dp && (!device.is_cuda() || step % kStopPollSteps == 0)) stop = dp->mean_over_ranks(stop ? 1.0 : 0.0) > 0.0;
    if (stop) {
      result.interrupted = true;
      break;
    }
    auto batch = loader.next();
    const int64_t B = batch.x0.size(0);
    const double lr = learning_rate(config, step);
    window_loss_sum += train_step(batch.x0, batch.labels, lr);
    for (auto& track : tracks) track.ema.update(*track.model, *model);
    ++step;
    if (const auto fit = budget.after_step(step, bar.elapsed_seconds())) {
      config.steps = fit->steps;
      bar.set_total(config.steps);
      std::ostringstream note;
      note << "train: " << config.steps << " steps fit " << config.minutes << " minutes at " << std::setprecision(3)
           << fit->seconds_per_step << " s a step (timed over steps " << fit->timed_from << " to " << fit->timed_to
           << ")";
      bar.note(note.str());
    }
    if (rank0 && !tracks.empty() && (step % config.ema_snapshot_every == 0 || step == config.steps)) {
      CheckpointInfo now = info;
      now.step = step;
      for (const auto& track : tracks) save_ema_snapshot(config.out_dir, track.model, now, track.ema.gamma());
    }
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
    if (log_now && !device.is_cuda()) {
      // Cores that other processes took or gave back since the start: one thread per free core
      // (a thread whose core is busy stalls every parallel region's barrier).
      const int threads = threads_for_load(torch::get_num_threads(), 0.0);
      if (threads != torch::get_num_threads()) torch::set_num_threads(threads);
    }
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
      write_preview(config.out_dir, step, diffusion, ema_model, info.data, previews, device);
      model->train();
    }
  }
  if (window_steps > 0) result.loss = window_loss_sum.item<double>() / window_steps;
  save_all(step);
  if (rank0 && !result.interrupted)
    write_preview(config.out_dir, step, diffusion, ema_model, info.data, previews, device);
  bar.finish(result.interrupted ? "interrupted" : "done");
  result.step = step;
  result.steps = config.steps;
  result.seconds = bar.elapsed_seconds();
  return result;
}

}  // namespace diffuse
