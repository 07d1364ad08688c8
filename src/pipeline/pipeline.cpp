#include "diffuse/pipeline/pipeline.h"

#include <cctype>
#include <stdexcept>

#include "diffuse/eval/classifier.h"
#include "diffuse/eval/frechet.h"
#include "diffuse/io/image.h"
#include "diffuse/runtime/cuda_graph_network.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/util/environment.h"

namespace diffuse {

std::vector<int64_t> Pipeline::image_shape() const {
  const auto& data = checkpoint.info.data;
  return {data.channels, data.image_size, data.image_size};
}

Pipeline load_pipeline(const std::string& checkpoint_path, const Compute& compute) {
  auto checkpoint = load_checkpoint(checkpoint_path, compute.device);
  checkpoint.model->set_memory_format(compute.memory_format);
  checkpoint.model->eval();
  GaussianDiffusion diffusion(NoiseSchedule(checkpoint.info.schedule), checkpoint.info.objective, compute.device,
                              checkpoint.info.sampling.clipped_eps);
  return Pipeline{std::move(checkpoint), std::move(diffusion), compute};
}

namespace {

void check_guidance(const Pipeline& pipeline, double guidance) {
  if (pipeline.info().model.num_classes == 0 && guidance > 0) {
    throw std::invalid_argument("guidance needs a class-conditional checkpoint (train with --class-cond)");
  }
  if (!pipeline.info().model.null_class && guidance > 0) {
    throw std::invalid_argument("guidance needs the unconditional model ε(x, ∅), and this one was trained without it");
  }
}

}  // namespace

ConditionalDenoiser make_denoiser(const Pipeline& pipeline, double guidance) {
  check_guidance(pipeline, guidance);
  const int64_t classes = pipeline.info().model.num_classes;
  UNet model = pipeline.checkpoint.model;  // shares the module
  const Compute compute = pipeline.compute;
  ConditionalDenoiser network = [model, compute](const torch::Tensor& x, const torch::Tensor& t,
                                                 const torch::Tensor& y) mutable {
    AutocastScope autocast(compute.device, compute.precision);  // bf16 inside; the output comes back in x's dtype
    return model->forward(x, t, y);
  };
  if (classes > 0) network = classifier_free_guidance(std::move(network), classes, guidance);
  return compute.cuda_graph ? replay_as_cuda_graph(std::move(network)) : network;
}

Denoiser make_unconditional_denoiser(const Pipeline& pipeline) {
  const auto& model = pipeline.info().model;
  if (model.num_classes > 0 && !model.null_class) {
    throw std::invalid_argument(
        "this class-conditional model was trained without an unconditional class (diffusers' num_class_embeds), "
        "and the NLL and editing run the network without labels");
  }
  // no labels: the model's ∅ (no guidance is applied at w = 0)
  return [network = make_denoiser(pipeline)](const torch::Tensor& x, const torch::Tensor& t) {
    return network(x, t, torch::Tensor());
  };
}

GenerateOptions default_generate_options(const Pipeline& pipeline) {
  const auto& defaults = pipeline.info().sampling;
  GenerateOptions options;
  options.sampler.spacing = defaults.spacing;
  options.sampler.ddpm_large_variance = defaults.ddpm_large_variance;
  options.clip_x0 = defaults.clip_x0;
  return options;
}

int64_t sampling_steps(const Pipeline& pipeline, const GenerateOptions& options) {
  return sampling_steps(options.sampler.name, options.steps, pipeline.diffusion.timesteps());
}

torch::Tensor generate(const Pipeline& pipeline, const GenerateOptions& options, const BatchStepCallback& callback,
                       const BatchDoneCallback& on_batch) {
  const int64_t steps = sampling_steps(pipeline, options);
  auto sampler = make_sampler(options.sampler, pipeline.diffusion.schedule());
  auto gen = at::detail::createCPUGenerator(options.seed);
  c10::InferenceMode inference;
  BatchDoneCallback clamped;
  if (on_batch) clamped = [&](int64_t first, const torch::Tensor& images) { on_batch(first, images.clamp(-1.0, 1.0)); };
  auto images = generate_images(pipeline.diffusion, *sampler, make_denoiser(pipeline, options.guidance), options.labels,
                                options.n, options.batch_size, pipeline.image_shape(),
                                SampleOptions{steps, options.clip_x0}, gen, callback, clamped);
  return images.defined() ? images.clamp(-1.0, 1.0) : images;
}

NllResult evaluate_nll(const Pipeline& pipeline, const Dataset& data, const NllOptions& options) {
  return evaluate_nll(make_unconditional_denoiser(pipeline), pipeline.diffusion, data, options);
}

namespace {

// Where the cFID classifier of a data set is cached: cache_directory(), else ./.cache/diffuse;
// keyed by the data set's name and image shape, which the reference split shares with training.
std::string classifier_cache_path(const Dataset& data) {
  std::string dir = cache_directory();
  if (dir.empty()) dir = "./.cache/diffuse";
  std::string name = data.name;
  for (char& c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-') c = '_';
  return dir + "/classifier-" + name + "-" + std::to_string(data.channels()) + "x" + std::to_string(data.image_size()) +
         ".safetensors";
}

}  // namespace

CfidResult evaluate_cfid(const Pipeline& pipeline, const GenerateOptions& options, const Dataset& reference,
                         const std::function<Dataset()>& load_training_split, bool progress,
                         const BatchStepCallback& callback) {
  // what would fail in generation fails before the classifier is loaded or trained
  check_guidance(pipeline, options.guidance);
  sampling_steps(pipeline, options);
  CfidResult r;
  r.classifier_path = classifier_cache_path(reference);
  ClassifierOptions co;
  co.progress = progress;
  auto classifier = load_or_train_classifier(r.classifier_path, reference.channels(), reference.image_size(),
                                             reference.num_classes, load_training_split, co);
  r.classifier_accuracy = classifier_accuracy(classifier, reference);

  GenerateOptions g = options;
  const int64_t classes = pipeline.info().model.num_classes;
  if (classes > 0 && !g.labels.defined()) g.labels = torch::arange(g.n, torch::kLong).remainder(classes);
  const auto generated = generate(pipeline, g, callback);
  r.images = generated.size(0);
  // Generated images are quantised to 8 bits like the data, so that both sides see the same kind of input.
  auto [generated_features, generated_logits] = classifier_outputs(classifier, from_uint8(to_uint8(generated)));
  auto [reference_features, reference_logits] = classifier_outputs(classifier, from_uint8(reference.images));
  r.cfid = frechet_distance(feature_statistics(generated_features), feature_statistics(reference_features));
  r.entropy_generated = predicted_class_entropy(generated_logits);
  r.entropy_reference = predicted_class_entropy(reference_logits);
  return r;
}

}  // namespace diffuse
