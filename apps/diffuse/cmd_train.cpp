// diffuse train: fit ε_θ (or x_θ) to a data set with L_simple; see include/diffuse/train/trainer.h.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "diffuse/train/trainer.h"

namespace diffuse::cli {

namespace {

std::atomic<bool> g_stop{false};
std::atomic<int> g_signal{0};

// Ctrl-C, and what timeout, Slurm, systemd and docker send (SIGTERM) or a closed terminal (SIGHUP):
// finish the step, save, exit 128 + the signal. A second one stops at once.
constexpr int kStopSignals[] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void on_stop_signal(int signal) {
  g_signal.store(signal);
  g_stop.store(true);
  std::signal(signal, SIG_DFL);
}

struct TrainOptions {
  std::string data, out, model = "mnist", objective = "eps", loss = "simple", t_sampling = "uniform";
  ComputeFlags compute;
  std::string schedule = "linear", lr_schedule = "cosine";
  int64_t timesteps = 1000, image_size = 0, limit = 0;
  double max_data_gib = 1.0;
  bool class_cond = false;
  bool text_cond = false;  // with --text-cond / --no-text-cond; else: on for data with captions
  std::string image_cond;  // --image-cond: inpaint | super-resolution (empty: none)
  int64_t sr_factor = 4;
  UNetShape shape;  // --channels, --channel-mult, --res-blocks, --attention-res
  TrainConfig config;
};

// On --resume the model, schedule and objective come from the run's train state: a flag that
// defines them, given explicitly, must agree with it (else the run would silently ignore it).
void check_resume_flags(const CLI::App& cmd, const TrainOptions& o, const CheckpointInfo& asked) {
  const std::string state_path = o.out + "/train_state.safetensors";
  if (!std::filesystem::exists(state_path)) return;  // the trainer says there is nothing to resume
  const auto run = checkpoint_info_from_metadata(load_safetensors_metadata(state_path), state_path);
  auto refuse = [&](const std::string& flag, const std::string& run_value) {
    throw std::runtime_error(flag + ": the run in '" + o.out + "' has " + run_value +
                             "; a run's model, schedule and objective stay as they began (drop the flag, or "
                             "start a new --out)");
  };
  auto network = asked.model;  // labels, text and images are --class-cond's, --text-cond's and --image-cond's, below
  network.num_classes = run.model.num_classes;
  network.extra_in_channels = run.model.extra_in_channels;
  if (run.model.text_conditional()) network = with_text(network, run.model.text_vocab_size, run.model.text_max_tokens);
  if ((cmd.count("--model") || o.shape.changes_anything()) && to_json(network) != to_json(run.model)) {
    refuse("--model " + o.model, "the network '" + run.model.name + "'");
  }
  if (cmd.count("--class-cond") && (run.model.num_classes > 0) != o.class_cond) refuse("--class-cond", "no labels");
  if ((cmd.count("--text-cond") || cmd.count("--no-text-cond")) && run.model.text_conditional() != o.text_cond) {
    refuse(o.text_cond ? "--text-cond" : "--no-text-cond", run.model.text_conditional() ? "a text encoder" : "no text");
  }
  if ((cmd.count("--image-cond") || cmd.count("--sr-factor")) &&
      (run.image_condition ? to_json(*run.image_condition) : nlohmann::json()) !=
          (asked.image_condition ? to_json(*asked.image_condition) : nlohmann::json())) {
    refuse("--image-cond " + o.image_cond,
           run.image_condition ? "the " + to_json(*run.image_condition).dump() + " condition" : "no image condition");
  }
  if (cmd.count("--timesteps") && asked.schedule.timesteps != run.schedule.timesteps) {
    refuse("--timesteps " + std::to_string(o.timesteps), "T = " + std::to_string(run.schedule.timesteps));
  }
  if (cmd.count("--schedule") && asked.schedule.kind != run.schedule.kind) {
    refuse("--schedule " + o.schedule, "the " + to_string(run.schedule.kind) + " schedule");
  }
  if (cmd.count("--objective") && asked.objective != run.objective) {
    refuse("--objective " + o.objective, "objective " + to_string(run.objective));
  }
}

void run_train(const CLI::App& cmd, TrainOptions& o) {
  if ((cmd.count("--log-snr-mean") || cmd.count("--log-snr-std")) && o.t_sampling != "log-snr-normal") {
    throw std::runtime_error("--log-snr-mean and --log-snr-std belong to --t-sampling log-snr-normal");
  }
  const auto compute = resolve_compute(o.compute, Workload::training);
  // Launched by torchrun or a cluster launcher (WORLD_SIZE > 1): data parallelism, one GPU per local rank.
  const auto dist = distributed_env_from_environment();
  const auto device = dist.enabled() && compute.device.is_cuda()
                          ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(dist.local_rank))
                          : compute.device;
  std::unique_ptr<DataParallel> data_parallel;
  if (dist.enabled()) {
    std::fprintf(stderr, "data parallel: rank %d of %d, rendezvous at %s:%d\n", dist.rank, dist.world_size,
                 dist.master_addr.c_str(), dist.master_port);
    data_parallel = std::make_unique<DataParallel>(dist, device);
    o.config.data_parallel = data_parallel.get();
  }
  o.config.precision = compute.precision;
  o.config.memory_format = compute.memory_format;
  o.config.timestep_sampling.kind = timestep_sampling_from_string(o.t_sampling);
  auto data = load_dataset(o.data, Split::train,
                           DataOptions{o.image_size, o.limit, static_cast<uint64_t>(o.max_data_gib * (1 << 30))});
  std::fprintf(stderr, "data: %s, %lld images of %lldx%lldx%lld, %lld classes\n", data.name.c_str(),
               static_cast<long long>(data.size()), static_cast<long long>(data.channels()),
               static_cast<long long>(data.image_size()), static_cast<long long>(data.image_size()),
               static_cast<long long>(data.num_classes));

  CheckpointInfo info;
  info.model = reshaped(unet_config_by_name(o.model, data.channels(), data.image_size()), o.shape);
  info.schedule.kind = beta_schedule_from_string(o.schedule);
  info.schedule.timesteps = o.timesteps;
  info.objective = objective_from_string(o.objective);
  info.data = DataInfo{data.name, data.channels(), data.image_size(), data.num_classes};
  if (o.class_cond) {
    if (data.num_classes < 2) {
      throw std::runtime_error("--class-cond needs a labelled data set; '" + o.data + "' has no classes");
    }
    info.model.num_classes = data.num_classes;
  }
  // Text: asked for, or the default for captioned data that is not trained on its classes.
  const bool text_asked = cmd.count("--text-cond") || cmd.count("--no-text-cond");
  const bool text_cond = text_asked ? o.text_cond : data.captioned() && !o.class_cond;
  o.text_cond = text_cond;
  if (text_cond) {
    if (!data.captioned()) {
      throw std::runtime_error("--text-cond needs captions, and '" + o.data +
                               "' has none (a NAME.txt beside each "
                               "image, a metadata.jsonl or metadata.csv, or --data captioned-digits)");
    }
    if (o.class_cond) throw std::runtime_error("--text-cond and --class-cond: a model takes one kind of condition");
    info.tokenizer = Tokenizer::learn(data.captions);
    info.model = with_text(info.model, info.tokenizer->vocab_size(), info.tokenizer->max_tokens());
    if (!text_asked)
      std::fprintf(stderr, "data has captions: training a text-conditional model (--no-text-cond: not)\n");
    std::fprintf(stderr, "tokenizer: %lld words, prompts of up to %lld words\n",
                 static_cast<long long>(info.tokenizer->words().size()),
                 static_cast<long long>(info.tokenizer->max_tokens() - 1));
  }
  if (!o.image_cond.empty()) {  // the condition's channels join x_t's at the network's input
    if (o.class_cond || text_cond) {
      throw std::runtime_error("--image-cond and --" + std::string(o.class_cond ? "class" : "text") +
                               "-cond: a model takes one kind of condition" +
                               (text_cond && !text_asked ? " (the data has captions: add --no-text-cond)" : ""));
    }
    ImageCondition condition{image_condition_kind_from_string(o.image_cond), o.sr_factor};
    check_image_condition(condition, data.image_size());
    info.image_condition = condition;
    info.model.extra_in_channels = condition_channels(condition, data.channels());
  } else if (cmd.count("--sr-factor")) {
    throw std::runtime_error("--sr-factor belongs to --image-cond super-resolution");
  }
  if (o.config.resume) {
    check_resume_flags(cmd, o, info);
  } else {
    std::fprintf(stderr, "model: %s%s%s, %lld parameters; %s schedule, T = %lld, objective %s; %d thread%s\n",
                 o.model.c_str(), o.shape.changes_anything() ? " (reshaped)" : "",
                 o.class_cond           ? " (class-conditional)"
                 : o.text_cond          ? " (text-conditional)"
                 : info.image_condition ? (" (" + to_string(info.image_condition->kind) + ")").c_str()
                                        : "",
                 static_cast<long long>(UNet(info.model)->parameter_count()), o.schedule.c_str(),
                 static_cast<long long>(o.timesteps), o.objective.c_str(), torch::get_num_threads(),
                 torch::get_num_threads() == 1 ? "" : "s");
  }

  o.config.out_dir = o.out;
  o.config.loss = train_loss_from_string(o.loss);
  o.config.cosine_decay = o.lr_schedule == "cosine";
  o.config.stop = &g_stop;
  for (int s : kStopSignals) std::signal(s, on_stop_signal);
  const auto result = train(o.config, info, data, device);
  for (int s : kStopSignals) std::signal(s, SIG_DFL);
  // stopped by its own signal, or by another rank's (every rank stops with a saved state)
  const int stop_status = 128 + (g_signal.load() ? g_signal.load() : dist.enabled() ? SIGTERM : SIGINT);
  if (dist.rank > 0) {  // rank 0 reports and holds the checkpoint
    if (result.interrupted) std::exit(stop_status);
    return;
  }
  std::fprintf(stderr, "%s at step %lld after %.1f s, loss %.5f; checkpoint: %s/checkpoint.safetensors\n",
               result.interrupted ? "interrupted" : "finished", static_cast<long long>(result.step), result.seconds,
               result.loss, o.out.c_str());
  if (result.interrupted) {
    std::fprintf(stderr, "continue with: diffuse train --data %s --out %s --steps %lld --resume%s\n", o.data.c_str(),
                 o.out.c_str(), static_cast<long long>(result.steps),
                 dist.enabled() ? " (in every process, as before)" : "");
    std::exit(stop_status);
  }
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainOptions>();
  auto& c = o->config;
  auto* cmd = app.add_subcommand("train", "Train a diffusion model on images");
  cmd->add_option("--data", o->data, "mnist | fashion-mnist | cifar10 | DIR (IDX files or an image tree)")->required();
  cmd->add_option("--out", o->out, "Run directory (checkpoints, log.csv, previews)")->required();
  cmd->add_option("--model", o->model, "Network configuration")
      ->check(CLI::IsMember({"tiny", "mnist", "ddpm-cifar10"}))
      ->capture_default_str();
  add_model_shape_options(*cmd, o->shape);
  cmd->add_option("--steps", c.steps, "Total optimisation steps (with --minutes: the most)")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option("--minutes", c.minutes,
                  "Fit the steps to this many minutes of training, timed over steps 10 to 50 and again at each "
                  "tenth of the budget (0: off, --steps alone)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--batch-size", c.batch_size, "Images per step")->check(positive_number())->capture_default_str();
  cmd->add_option("--lr", c.lr, "Peak learning rate (AdamW)")->check(positive_number())->capture_default_str();
  cmd->add_option("--warmup", c.warmup, "Linear learning-rate warm-up steps")->check(non_negative_number())->capture_default_str();
  cmd->add_option("--lr-schedule", o->lr_schedule, "After warm-up: cosine decay to 0 at --steps, or constant")
      ->check(CLI::IsMember({"cosine", "constant"}))
      ->capture_default_str();
  cmd->add_option("--grad-clip", c.grad_clip, "Max gradient norm (0: off)")->check(non_negative_number())->capture_default_str();
  cmd->add_option("--ema-decay", c.ema_decay, "EMA decay of the weights used for sampling")
      ->check(unit_interval())
      ->capture_default_str();
  cmd->add_option("--ema-sigma-rel", c.ema_sigma_rel,
                  "Sample from a power-function EMA instead, its width a fraction of the steps so far (e.g. 0.05-0.10; "
                  "0: off, --ema-decay)")
      ->check(ema_sigma_rel_or_off())
      ->capture_default_str();
  cmd->add_option("--ema-snapshot-every", c.ema_snapshot_every,
                  "Every N steps, snapshots of two power-function EMAs (σ_rel 0.05, 0.10) in OUT/ema_snapshots, from "
                  "which `diffuse ema` rebuilds an EMA of any width after training (0: none)")
      ->check(non_negative_number())
      ->capture_default_str();
  // β = 1 would leave Adam's bias correction 1 − βᵏ at 0
  cmd->add_option("--adam-beta1", c.adam_beta1, "AdamW's decay of the gradient's running mean")
      ->check(half_open_unit_interval())
      ->capture_default_str();
  cmd->add_option("--adam-beta2", c.adam_beta2,
                  "AdamW's decay of the squared gradient's running mean (0.99 adapts faster in short runs)")
      ->check(half_open_unit_interval())
      ->capture_default_str();
  cmd->add_option("--weight-decay", c.weight_decay, "AdamW decoupled weight decay")->check(non_negative_number())->capture_default_str();
  cmd->add_option("--checkpoint-every", c.checkpoint_every, "Write a checkpoint every N steps (0: only at the end)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--preview-every", c.preview_every, "Write a DDIM-50 preview grid every N steps (0: only at the end)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--preview-n", c.preview_n, "Images in a preview grid")->check(CLI::Range(1, 1024))->capture_default_str();
  cmd->add_option("--log-every", c.log_every, "Append to log.csv every N steps")->check(positive_number())->capture_default_str();
  cmd->add_flag("--resume", c.resume, "Continue the run in --out (same step, optimizer, EMA and RNG)");
  cmd->add_option("--objective", o->objective,
                  "What the network predicts: the noise eps, the image x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0")
      ->check(CLI::IsMember({"eps", "x0", "v"}))
      ->capture_default_str();
  cmd->add_option("--loss", o->loss, "simple: ||target - f(x_t, t)||^2; vlb: the bound's terms L_t-1, L_0 (bits/dim)")
      ->check(CLI::IsMember({"simple", "vlb"}))
      ->capture_default_str();
  cmd->add_option("--min-snr-gamma", c.min_snr_gamma,
                  "--loss simple: weight each image's error so that x0's error counts min(SNR_t, gamma) "
                  "(Hang et al. 2023; 5 is theirs; 0: off)")
      ->check(non_negative_number())
      ->capture_default_str();
  cmd->add_option("--t-sampling", o->t_sampling,
                  "How each image's t is drawn: uniform (DDPM), or log-snr-normal: lambda ~ N(--log-snr-mean, "
                  "--log-snr-std^2) and t the step whose log SNR is nearest (reweights the loss across t)")
      ->check(CLI::IsMember({"uniform", "log-snr-normal"}))
      ->capture_default_str();
  cmd->add_option("--log-snr-mean", c.timestep_sampling.log_snr_mean,
                  "--t-sampling log-snr-normal: the mean of lambda = log(abar / (1 - abar))")
      ->check(CLI::Range(-30.0, 30.0))
      ->capture_default_str();
  cmd->add_option("--log-snr-std", c.timestep_sampling.log_snr_std,
                  "--t-sampling log-snr-normal: the standard deviation of lambda")
      ->check(CLI::Range(0.01, 100.0))
      ->capture_default_str();
  cmd->add_flag("--t-importance", c.timestep_sampling.loss_aware,
                "Draw t where the loss is large, in proportion to q(t) sqrt(E[loss_t^2]) with q the --t-sampling "
                "law, each image's loss weighted by q(t)/p(t): the same objective with less variance (importance "
                "sampling, Nichol & Dhariwal 2021); one process only");
  cmd->add_flag("--t-stratified", c.timestep_sampling.stratified,
                "Spread each batch's t over their law: the inverse CDF at (u + i)/B for one u ~ U[0, 1), in random "
                "order (each t still has the law; the batch covers it evenly: Kingma et al. 2021's low-discrepancy "
                "sampler)");
  cmd->add_flag("--class-cond", o->class_cond, "Learn eps(x_t, t, y) with the data's labels (and y dropped, for guidance)");
  cmd->add_flag("--text-cond,!--no-text-cond", o->text_cond,
                "Learn eps(x_t, t, prompt) from the data's captions (the default where it has them), with a "
                "tokenizer and a text encoder of its own");
  cmd->add_option("--image-cond", o->image_cond,
                  "Learn eps(x_t, t, c) with an image condition c made from each training image: inpaint (the image "
                  "outside a random mask, and the mask) or super-resolution (the image shrunk by --sr-factor)")
      ->check(CLI::IsMember({"inpaint", "super-resolution"}));
  cmd->add_option("--sr-factor", o->sr_factor,
                  "--image-cond super-resolution: how much smaller the low-resolution image is")
      ->check(CLI::Range(2, 64))
      ->capture_default_str();
  cmd->add_option("--label-dropout", c.label_dropout,
                  "--class-cond, --text-cond, --image-cond: probability of training with no label (the empty prompt, "
                  "no image condition)")
      ->check(unit_interval())
      ->capture_default_str();
  cmd->add_option("--schedule", o->schedule, "Beta schedule")
      ->check(CLI::IsMember({"linear", "cosine", "scaled-linear"}))
      ->capture_default_str();
  cmd->add_option("--timesteps", o->timesteps, "Diffusion steps T")->check(CLI::Range(2, 100000))->capture_default_str();
  cmd->add_option("--image-size", o->image_size,
                  "Resize every image to NxN (default: image folders 32, IDX and CIFAR-10 their own size, up to 256)")
      ->check(CLI::Range(4, 1024));
  cmd->add_option("--max-data-gib", o->max_data_gib,
                  "The pixels an IDX data set may hold, in GiB (a limit against corrupt files)")
      ->check(CLI::Range(0.001, 1024.0))
      ->capture_default_str();
  cmd->add_option("--limit", o->limit, "Use only the first N training images (0: all)")->check(non_negative_number())->capture_default_str();
  cmd->add_option("--seed", c.seed, "Random seed")->capture_default_str();
  cmd->add_flag("--no-progress", [&c](int64_t) { c.progress = false; }, "No progress bar");
  add_compute_options(*cmd, o->compute);
  cmd->callback([o, cmd] { run_train(*cmd, *o); });
}

}  // namespace diffuse::cli
