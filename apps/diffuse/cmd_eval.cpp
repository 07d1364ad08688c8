// diffuse eval --metric nll: the variational bound in bits/dim over a data split.
// diffuse eval --metric fid: the classifier-Fréchet distance (cFID) of generated images to a split.
// diffuse eval --metric prompts: how often a model trained on the captioned digits draws what its
// prompt says, on captions it saw in training and on captions it never saw.
// Either as a table or as one JSON object.
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "diffuse/util/progress.h"
#include "sampling_progress.h"

namespace diffuse::cli {

namespace {

struct EvalOptions {
  std::string checkpoint, data, split = "test", metric = "nll";
  std::string variance;  // empty: the checkpoint's (diffusers' variance_type), else posterior
  ComputeFlags compute;
  bool json = false;
  bool unconditional = false;  // nll of a text-conditional model: with ∅ instead of each image's caption
  NllOptions nll;
  SamplerFlags sampler;
  int64_t batch_size = 256;
  double guidance = 0.0;
};

void run_cfid(const EvalOptions& o, const Pipeline& pipeline, const std::string& data_name, const Dataset& reference) {
  const auto& info = pipeline.info();
  GenerateOptions g;
  g.sampler = sampler_config_of(o.sampler, pipeline.info().sampling);
  g.steps = o.sampler.steps;
  g.n = o.nll.n > 0 ? o.nll.n : 1000;
  g.batch_size = o.batch_size;
  g.seed = o.nll.seed;
  g.guidance = o.guidance;
  g.clip_x0 = clip_x0_of(o.sampler, pipeline.info().sampling);
  const int64_t steps = sampling_steps(pipeline, g), n = g.n;
  const int64_t classes = info.model.num_classes;
  if (classes == 0 && !info.model.text_conditional() && !info.image_condition && o.guidance > 0) {
    throw std::runtime_error("--guidance needs a class-, text- or image-conditional checkpoint");
  }
  if (n < 1000) {
    std::fprintf(stderr,
                 "note: %lld images are few for 128 classifier features: the cFID is biased upwards (compare only "
                 "runs with the same --n)\n",
                 static_cast<long long>(n));
  }
  SamplingProgress bar("generate", n, g.batch_size, steps, o.nll.progress);
  BatchStepCallback cb = [&](int64_t first, const SampleStep& s) { bar.update(first, s); };
  const auto r = evaluate_cfid(
      pipeline, g, reference,
      [&] { return load_dataset(data_name, Split::train, DataOptions{info.data.image_size, 0}); }, o.nll.progress, cb);
  bar.finish();
  const double cfid = r.cfid, accuracy = r.classifier_accuracy, h_gen = r.entropy_generated, h_ref = r.entropy_reference;
  const std::string& cache = r.classifier_path;
  const std::string sampler_text =
      o.sampler.sampler + "-" + std::to_string(steps) +
      (o.sampler.sampler == "ddim" ? " eta " + std::to_string(o.sampler.eta) : "") +
      (classes > 0 ? " class-balanced" : "") +
      (info.image_condition ? " under the reference's own " + to_string(info.image_condition->kind) + " conditions"
                            : "") +
      (classes > 0 || o.guidance > 0 ? ", guidance " + std::to_string(o.guidance) : "");
  if (o.json) {
    nlohmann::json j = {
        {"cfid", cfid},
        {"cfid_real", r.cfid_real},
        {"classifier_accuracy", accuracy},
        {"class_entropy",
         {{"generated", h_gen}, {"reference", h_ref}, {"max", std::log(double(reference.num_classes))}}},
        {"images", n},
        {"reference_images", reference.size()},
        {"sampler", sampler_text},
        {"seed", o.nll.seed},
        {"checkpoint", o.checkpoint},
        {"data", data_name},
        {"split", o.split}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("cFID (classifier-Frechet distance; not comparable with Inception FID) on %s/%s: %.3f\n",
              data_name.c_str(), o.split.c_str(), cfid);
  std::printf("  generated: %lld images, %s, seed %llu; reference: %lld %s images\n", static_cast<long long>(n),
              sampler_text.c_str(), static_cast<unsigned long long>(o.nll.seed), static_cast<long long>(reference.size()),
              o.split.c_str());
  std::printf("  real images: %lld of the training split score %.3f (the floor at this n)\n", static_cast<long long>(n),
              r.cfid_real);
  std::printf("  classifier: accuracy %.4f on the reference (%s)\n", accuracy, cache.c_str());
  std::printf("  predicted-class entropy: generated %.3f, reference %.3f nats (uniform: %.3f)\n", h_gen, h_ref,
              std::log(static_cast<double>(reference.num_classes)));
}

void run_prompt_following(const EvalOptions& o, const Pipeline& pipeline) {
  const auto& info = pipeline.info();
  if (!info.model.text_conditional()) {
    throw std::runtime_error("--metric prompts needs a text-conditional checkpoint (train with --text-cond)");
  }
  if (info.data.name != "captioned-digits") {
    throw std::runtime_error("--metric prompts reads the digits of the captioned digits; '" + o.checkpoint +
                             "' was trained on '" + info.data.name + "'");
  }
  GenerateOptions g;
  g.sampler = sampler_config_of(o.sampler, info.sampling);
  g.steps = o.sampler.steps;
  g.n = o.nll.n > 0 ? o.nll.n : 500;
  g.batch_size = o.batch_size;
  g.seed = o.nll.seed;
  g.guidance = o.guidance;
  g.clip_x0 = clip_x0_of(o.sampler, info.sampling);
  const int64_t steps = sampling_steps(pipeline, g);
  const auto mnist = load_dataset("mnist", Split::test);
  ComposeOptions compose;
  compose.n = 2000;
  compose.canvas = info.data.image_size;
  compose.seed = 1;
  compose.split = Split::test;
  const auto test = compose_captioned_digits(mnist, compose);
  SamplingProgress bar("generate", 2 * g.n, g.batch_size, steps, o.nll.progress);
  int64_t offset = 0, last_first = -1;
  BatchStepCallback cb = [&](int64_t first, const SampleStep& s) {
    if (first < last_first) offset += g.n;  // the second set of prompts began
    last_first = first;
    bar.update(offset + first, s);
  };
  const auto r = evaluate_prompt_following(
      pipeline, g, test, [] { return load_dataset("mnist", Split::train); }, o.nll.progress, cb);
  bar.finish();
  const std::string sampler_text = o.sampler.sampler + "-" + std::to_string(steps) +
                                   (o.sampler.sampler == "ddim" ? " eta " + std::to_string(o.sampler.eta) : "") +
                                   ", guidance " + std::to_string(o.guidance);
  if (o.json) {
    auto part = [](const PromptFollowing& p) {
      return nlohmann::json{{"both", p.both}, {"first", p.first}, {"second", p.second}, {"images", p.images}};
    };
    nlohmann::json j = {{"seen", part(r.seen)},
                        {"unseen", part(r.unseen)},
                        {"test_canvases_both", r.real_both},
                        {"classifier_accuracy_on_cells", r.classifier_accuracy},
                        {"sampler", sampler_text},
                        {"seed", o.nll.seed},
                        {"checkpoint", o.checkpoint}};
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("prompt following on the captioned digits (%s, seed %llu)\n\n", sampler_text.c_str(),
              static_cast<unsigned long long>(o.nll.seed));
  std::printf("  %-34s %8s %8s %8s %8s\n", "captions", "images", "both", "first", "second");
  auto row = [](const char* name, const PromptFollowing& p) {
    std::printf("  %-34s %8lld %8.3f %8.3f %8.3f\n", name, static_cast<long long>(p.images), p.both, p.first, p.second);
  };
  row("seen in training", r.seen);
  row("never seen (held-out triples)", r.unseen);
  std::printf("\n  the test canvases themselves: both %.3f (the measure's ceiling; %s)\n", r.real_both,
              r.classifier_path.c_str());
}

void run_eval(EvalOptions& o) {
  const auto compute = resolve_compute(o.compute, Workload::inference);
  const auto pipeline = load_pipeline(o.checkpoint, compute);
  const auto& info = pipeline.info();
  const std::string data_name = o.data.empty() ? info.data.name : o.data;
  if (data_name.empty()) throw std::runtime_error("the checkpoint does not name its data set: give --data");
  if (o.metric == "prompts") return run_prompt_following(o, pipeline);
  const bool nll = o.metric == "nll";
  auto data = load_dataset(data_name, split_from_string(o.split), DataOptions{info.data.image_size, nll ? o.nll.n : 0});
  if (data.channels() != info.data.channels || data.image_size() != info.data.image_size) {
    throw std::runtime_error("data '" + data_name + "' has " + std::to_string(data.channels()) + "x" +
                             std::to_string(data.image_size()) + " images; the checkpoint models " +
                             std::to_string(info.data.channels) + "x" + std::to_string(info.data.image_size));
  }
  if (!nll) return run_cfid(o, pipeline, data_name, data);
  if (o.nll.n <= 0) o.nll.n = 256;
  if (o.variance.empty()) o.variance = info.sampling.ddpm_large_variance ? "beta" : "posterior";
  o.nll.variance = model_variance_from_string(o.variance);
  const auto r = evaluate_nll(pipeline, data, o.nll, o.unconditional);
  const bool conditional = info.model.text_conditional() && data.captioned() && !o.unconditional;

  if (o.json) {
    nlohmann::json j = {
        {"bits_per_dim",
         {{"total", r.total.mean}, {"prior", r.prior.mean}, {"terms", r.terms.mean}, {"decoder", r.decoder.mean}}},
        {"stderr",
         {{"total", r.total.standard_error},
          {"prior", r.prior.standard_error},
          {"terms", r.terms.standard_error},
          {"decoder", r.decoder.standard_error}}},
        {"images", r.images},
        {"method", r.exact ? "exact" : "monte-carlo"},
        {"network_evaluations_per_image", r.network_evaluations},
        {"variance", o.variance},
        {"conditional_on_captions", conditional},
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
  if (conditional)
    std::printf("conditional on each image's caption: -log p(x_0 | caption) (--unconditional: with none)\n\n");
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
  o->nll.n = 0;  // 0: the metric's default (256 test images for nll, 1000 generated for fid)
  auto* cmd = app.add_subcommand("eval", "Evaluate a checkpoint: the NLL bound in bits/dim");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors, or a diffusers folder")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--data", o->data, "Data set (default: the one the checkpoint was trained on)");
  cmd->add_option("--split", o->split, "Split")->check(CLI::IsMember({"train", "test"}))->capture_default_str();
  cmd->add_option("--metric", o->metric,
                  "nll: bound in bits/dim; fid: classifier-Frechet distance (cFID); prompts: prompt following "
                  "(text-conditional models of the captioned digits)")
      ->check(CLI::IsMember({"nll", "fid", "prompts"}))
      ->capture_default_str();
  cmd->add_option("--n", o->nll.n, "nll: the first N images of the split (default 256); fid: generated images (default 1000)")
      ->check(non_negative_number());
  cmd->add_option("--batch-size", o->nll.batch_size, "Images per network call")->check(positive_number())->capture_default_str();
  cmd->add_flag("--unconditional", o->unconditional,
                "nll of a text-conditional model: the empty prompt instead of each image's caption");
  cmd->add_flag("--exact", o->nll.exact, "Sum all T terms (T network calls per image) instead of Monte Carlo");
  cmd->add_option("--t-samples", o->nll.t_samples, "Monte Carlo: timesteps drawn per image")
      ->check(positive_number())
      ->capture_default_str();
  cmd->add_option(
         "--variance", o->variance,
         "Reverse-process variance: posterior (beta-tilde) or beta (default: the checkpoint's, else posterior)")
      ->check(CLI::IsMember({"posterior", "beta"}));
  cmd->add_option("--seed", o->nll.seed, "Random seed")->capture_default_str();
  cmd->add_option("--sample-batch-size", o->batch_size, "fid: images per sampling batch")->check(positive_number())->capture_default_str();
  add_sampler_options(*cmd, o->sampler);
  cmd->add_option("--guidance", o->guidance,
                  "fid, prompts: guidance w for class-conditional (labels balanced over classes) or text-conditional "
                  "checkpoints (the reference's captions as prompts)")
      ->check(guidance_range())
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "Print one JSON object");
  cmd->add_flag("--no-progress", [o](int64_t) { o->nll.progress = false; }, "No progress bar");
  add_compute_options(*cmd, o->compute);
  add_cuda_graph_option(*cmd, o->compute);
  cmd->callback([o] { run_eval(*o); });
}

}  // namespace diffuse::cli
