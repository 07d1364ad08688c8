// diffuse eval --metric nll: the variational bound in bits/dim over a data split, as a table or
// one JSON object.
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "diffuse/eval/nll.h"
#include "diffuse/io/checkpoint.h"

namespace diffuse::cli {

namespace {

struct EvalOptions {
  std::string checkpoint, data, split = "test", metric = "nll", variance = "posterior", device = "cpu";
  bool json = false;
  NllOptions nll;
};

void run_eval(EvalOptions& o) {
  const auto device = resolve_device(o.device);
  auto ckpt = load_checkpoint(o.checkpoint, device);
  const auto& info = ckpt.info;
  const std::string data_name = o.data.empty() ? info.data.name : o.data;
  auto data = load_dataset(data_name, split_from_string(o.split), DataOptions{info.data.image_size, o.nll.n});
  if (data.channels() != info.data.channels || data.image_size() != info.data.image_size) {
    throw std::runtime_error("data '" + data_name + "' has " + std::to_string(data.channels()) + "x" +
                             std::to_string(data.image_size()) + " images; the checkpoint models " +
                             std::to_string(info.data.channels) + "x" + std::to_string(info.data.image_size));
  }
  GaussianDiffusion diffusion(NoiseSchedule(info.schedule), info.objective, device);
  o.nll.variance = model_variance_from_string(o.variance);
  Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) { return ckpt.model->forward(x, t); };
  const auto r = evaluate_nll(net, diffusion, data, o.nll);

  if (o.json) {
    nlohmann::json j = {
        {"bits_per_dim",
         {{"total", r.total.mean}, {"prior", r.prior.mean}, {"terms", r.terms.mean}, {"decoder", r.decoder.mean}}},
        {"stderr",
         {{"total", r.total.standard_error}, {"prior", r.prior.standard_error}, {"terms", r.terms.standard_error}, {"decoder", r.decoder.standard_error}}},
        {"images", r.images},
        {"method", r.exact ? "exact" : "monte-carlo"},
        {"network_evaluations_per_image", r.network_evaluations},
        {"variance", o.variance},
        {"checkpoint", o.checkpoint},
        {"data", data_name},
        {"split", o.split}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("NLL bound on %s/%s, %lld images, %s (%lld network evaluations per image), sigma^2 = %s\n\n",
              data_name.c_str(), o.split.c_str(), static_cast<long long>(r.images),
              r.exact ? "exact sum over t" : "Monte Carlo over t", static_cast<long long>(r.network_evaluations),
              o.variance == "posterior" ? "beta-tilde" : "beta");
  std::printf("  %-34s %12s %10s\n", "term", "bits/dim", "stderr");
  auto row = [](const char* name, const Estimate& e) { std::printf("  %-34s %12.5f %10.5f\n", name, e.mean, e.standard_error); };
  row("L_T      prior  KL(q(x_T|x_0)||N(0,I))", r.prior);
  row("sum L_t-1 terms (t = 2..T)", r.terms);
  row("L_0      decoder -log p(x_0|x_1)", r.decoder);
  row("total    (upper bound on NLL)", r.total);
}

}  // namespace

void add_eval_command(CLI::App& app) {
  auto o = std::make_shared<EvalOptions>();
  auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint: the NLL bound in bits/dim");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors")->required()->check(CLI::ExistingFile);
  cmd->add_option("--data", o->data, "Data set (default: the one the checkpoint was trained on)");
  cmd->add_option("--split", o->split, "Split")->check(CLI::IsMember({"train", "test"}))->capture_default_str();
  cmd->add_option("--metric", o->metric, "Metric")->check(CLI::IsMember({"nll"}))->capture_default_str();
  cmd->add_option("--n", o->nll.n, "Images (the first N of the split)")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_option("--batch-size", o->nll.batch_size, "Images per network call")->check(CLI::PositiveNumber)->capture_default_str();
  cmd->add_flag("--exact", o->nll.exact, "Sum all T terms (T network calls per image) instead of Monte Carlo");
  cmd->add_option("--t-samples", o->nll.t_samples, "Monte Carlo: timesteps drawn per image")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--variance", o->variance, "Reverse-process variance: posterior (beta-tilde) or beta")
      ->check(CLI::IsMember({"posterior", "beta"}))
      ->capture_default_str();
  cmd->add_option("--seed", o->nll.seed, "Random seed")->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->add_flag("--no-progress", [o](int64_t) { o->nll.progress = false; }, "No progress bar");
  add_device_option(*cmd, o->device);
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace diffuse::cli
