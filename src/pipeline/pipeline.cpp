#include "diffuse/pipeline/pipeline.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <sstream>
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
  const auto& model = pipeline.info().model;
  if (model.num_classes == 0 && !model.text_conditional() && model.extra_in_channels == 0 && guidance > 0) {
    throw std::invalid_argument(
        "guidance needs a class-, text- or image-conditional checkpoint (train with --class-cond, --text-cond or "
        "--image-cond)");
  }
  if (!pipeline.info().model.null_class && guidance > 0) {
    throw std::invalid_argument("guidance needs the unconditional model ε(x, ∅), and this one was trained without it");
  }
}

}  // namespace

ConditionalDenoiser make_denoiser(const Pipeline& pipeline, double guidance, const torch::Tensor& negative) {
  check_guidance(pipeline, guidance);
  const int64_t classes = pipeline.info().model.num_classes;
  const bool text = pipeline.info().model.text_conditional();
  UNet model = pipeline.checkpoint.model;  // shares the module
  const Compute compute = pipeline.compute;
  ConditionalDenoiser network = [model, compute](const torch::Tensor& x, const torch::Tensor& t,
                                                 const torch::Tensor& y) mutable {
    AutocastScope autocast(compute.device, compute.precision);  // bf16 inside; the output comes back in x's dtype
    return model->forward(x, t, y);
  };
  if (classes > 0) network = classifier_free_guidance(std::move(network), classes, guidance);
  if (text) {  // ∅: the empty prompt, or the negative prompt in its place
    // on the device before any CUDA graph captures the guided network (sampling/guidance.h)
    const auto null_row = (negative.defined() ? negative : model->null_condition(1, torch::kCPU)[0]).to(compute.device);
    network = classifier_free_guidance(std::move(network), null_row, guidance);
  }
  if (pipeline.info().model.extra_in_channels > 0) {  // ∅: zero condition channels
    network = classifier_free_guidance(std::move(network), model->null_condition(1, compute.device)[0], guidance);
  }
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

torch::Tensor encode_prompts(const Pipeline& pipeline, const std::vector<std::string>& prompts, int64_t n) {
  const auto& tokenizer = pipeline.info().tokenizer;
  if (!tokenizer) throw std::invalid_argument("a prompt needs a text-conditional checkpoint (train with --text-cond)");
  if (prompts.size() != 1 && static_cast<int64_t>(prompts.size()) != n) {
    throw std::invalid_argument(std::to_string(prompts.size()) + " prompts for " + std::to_string(n) +
                                " images: give one, or one per image");
  }
  for (const auto& prompt : prompts) {
    if (const auto unknown = tokenizer->unknown_words(prompt); !unknown.empty()) {
      std::string known;
      for (const auto& w : tokenizer->words()) known += (known.empty() ? "" : " ") + w;
      if (known.size() > 400) known = known.substr(0, 400) + " …";
      throw std::invalid_argument("prompt '" + prompt + "': the word '" + unknown.front() +
                                  "' is not in this model's vocabulary (" + std::to_string(tokenizer->words().size()) +
                                  " words: " + known + ")");
    }
    if (tokenizer->truncated(prompt)) {
      throw std::invalid_argument("prompt '" + prompt + "' has more than the " +
                                  std::to_string(tokenizer->max_tokens() - 1) + " words this model reads");
    }
  }
  const auto rows = tokenizer->encode(prompts);
  return prompts.size() == 1 ? rows.expand({n, rows.size(1)}).contiguous() : rows;
}

torch::Tensor generate(const Pipeline& pipeline, const GenerateOptions& options, const BatchStepCallback& callback,
                       const BatchDoneCallback& on_batch) {
  const int64_t steps = sampling_steps(pipeline, options);
  auto sampler = make_sampler(options.sampler, pipeline.diffusion.schedule());
  auto gen = at::detail::createCPUGenerator(options.seed);
  c10::InferenceMode inference;
  BatchDoneCallback clamped;
  if (on_batch) clamped = [&](int64_t first, const torch::Tensor& images) { on_batch(first, images.clamp(-1.0, 1.0)); };
  const bool text = pipeline.info().model.text_conditional();
  if (!text && (!options.prompts.empty() || !options.negative_prompt.empty())) {
    throw std::invalid_argument("a prompt needs a text-conditional checkpoint (train with --text-cond)");
  }
  torch::Tensor conditions = options.labels, negative;
  const int64_t extra = pipeline.info().model.extra_in_channels;
  if (options.image_conditions.defined()) {
    const auto& c = options.image_conditions;
    const auto shape = pipeline.image_shape();
    if (extra == 0)
      throw std::invalid_argument("a condition image needs an image-conditional checkpoint (--image-cond)");
    if (c.dim() != 4 || (c.size(0) != 1 && c.size(0) != options.n) || c.size(1) != extra || c.size(2) != shape[1] ||
        c.size(3) != shape[2]) {
      std::ostringstream sizes;
      sizes << c.sizes();
      throw std::invalid_argument("image conditions " + sizes.str() + " for " + std::to_string(options.n) +
                                  " images of a model that takes [n, " + std::to_string(extra) + ", " +
                                  std::to_string(shape[1]) + ", " + std::to_string(shape[2]) + "]");
    }
    conditions = c.expand({options.n, c.size(1), c.size(2), c.size(3)}).to(torch::kFloat32).contiguous();
  }
  if (extra > 0 && options.guidance > 0 && !conditions.defined())
    conditions = pipeline.checkpoint.model->null_condition(options.n, torch::kCPU);
  if (text && !options.prompts.empty()) conditions = encode_prompts(pipeline, options.prompts, options.n);
  if (text && options.guidance > 0 && !conditions.defined())
    conditions = pipeline.checkpoint.model->null_condition(options.n, torch::kCPU);
  if (!options.negative_prompt.empty()) negative = encode_prompts(pipeline, {options.negative_prompt}, 1)[0];
  auto images = generate_images(pipeline.diffusion, *sampler, make_denoiser(pipeline, options.guidance, negative),
                                conditions, options.n, options.batch_size, pipeline.image_shape(),
                                SampleOptions{steps, options.clip_x0}, gen, callback, clamped);
  return images.defined() ? images.clamp(-1.0, 1.0) : images;
}

NllResult evaluate_nll(const Pipeline& pipeline, const Dataset& data, const NllOptions& options, bool unconditional) {
  if (pipeline.info().model.text_conditional() && data.captioned() && !unconditional) {
    const auto prompts = encode_prompts(pipeline, data.captions, data.size());
    return evaluate_nll(make_denoiser(pipeline), pipeline.diffusion, data, prompts, options);
  }
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

CfidReference::CfidReference(const Dataset& reference, std::function<Dataset()> load_training_split, bool progress)
    : channels_(reference.channels()),
      image_size_(reference.image_size()),
      load_training_split_(std::move(load_training_split)),
      classifier_path_(classifier_cache_path(reference)) {
  ClassifierOptions co;
  co.progress = progress;
  classifier_ = load_or_train_classifier(
      classifier_path_, channels_, image_size_, reference.num_classes, [this] { return training_split(); }, co);
  auto [features, logits] = classifier_outputs(classifier_, from_uint8(reference.images));
  reference_statistics_ = feature_statistics(features);
  reference_accuracy_ = accuracy_of_logits(logits, reference.labels);  // one pass over the reference
  reference_entropy_ = predicted_class_entropy(logits);
}

const Dataset& CfidReference::training_split() {
  if (!training_) training_ = load_training_split_();
  return *training_;
}

CfidResult CfidReference::score(const torch::Tensor& images, uint64_t seed) {
  TORCH_CHECK(images.dim() == 4 && images.size(0) >= 2 && images.size(1) == channels_ &&
                  images.size(2) == image_size_ && images.size(3) == image_size_,
              "cFID: ", images.sizes(), " images against a reference of ", channels_, "x", image_size_, "x",
              image_size_);
  CfidResult r;
  r.images = images.size(0);
  r.classifier_path = classifier_path_;
  r.classifier_accuracy = reference_accuracy_;
  r.entropy_reference = reference_entropy_;
  // Generated images are quantised to 8 bits like the data, so that both sides see the same kind of input.
  auto [generated_features, generated_logits] = classifier_outputs(classifier_, from_uint8(to_uint8(images.cpu())));
  r.cfid = frechet_distance(feature_statistics(generated_features), reference_statistics_);
  r.entropy_generated = predicted_class_entropy(generated_logits);
  // the floor at this n: as many real training images, drawn without replacement
  const Dataset& real = training_split();
  auto gen = at::detail::createCPUGenerator(seed);
  const auto drawn = torch::randperm(real.size(), gen, torch::kLong).slice(0, 0, std::min(r.images, real.size()));
  const auto real_features = classifier_outputs(classifier_, from_uint8(real.images.index_select(0, drawn))).first;
  r.cfid_real = frechet_distance(feature_statistics(real_features), reference_statistics_);
  return r;
}

CfidResult images_cfid(const torch::Tensor& images, const Dataset& reference,
                       const std::function<Dataset()>& load_training_split, uint64_t seed, bool progress) {
  return CfidReference(reference, load_training_split, progress).score(images, seed);
}

CfidResult evaluate_cfid(const Pipeline& pipeline, const GenerateOptions& options, const Dataset& reference,
                         const std::function<Dataset()>& load_training_split, bool progress,
                         const BatchStepCallback& callback) {
  // what would fail in generation fails before the classifier is loaded or trained
  check_guidance(pipeline, options.guidance);
  sampling_steps(pipeline, options);
  GenerateOptions g = options;
  const auto& info = pipeline.info();
  const int64_t classes = info.model.num_classes;
  if (classes > 0 && !g.labels.defined()) g.labels = torch::arange(g.n, torch::kLong).remainder(classes);
  if (info.model.text_conditional() && g.prompts.empty() && reference.captioned()) {
    for (int64_t i = 0; i < g.n; ++i)
      g.prompts.push_back(reference.captions[i % reference.size()]);  // the reference's own
  }
  if (info.image_condition && !g.image_conditions.defined()) {  // the reference's own, masks drawn from the seed
    const auto rows = torch::arange(g.n, torch::kLong).remainder(reference.size());
    auto gen = at::detail::createCPUGenerator(options.seed);
    g.image_conditions =
        training_condition(*info.image_condition, from_uint8(reference.images.index_select(0, rows)), gen);
  }
  const auto generated = generate(pipeline, g, callback);
  return images_cfid(generated, reference, load_training_split, options.seed, progress);
}

PromptFollowingResult evaluate_prompt_following(const Pipeline& pipeline, const GenerateOptions& options,
                                                const CaptionedDigits& test,
                                                const std::function<Dataset()>& load_mnist_train, bool progress,
                                                const BatchStepCallback& callback) {
  if (!pipeline.info().model.text_conditional()) {
    throw std::invalid_argument("prompt following needs a text-conditional checkpoint (train with --text-cond)");
  }
  if (test.images.image_size() != pipeline.info().data.image_size) {
    throw std::invalid_argument("prompt following: the captioned canvases are " +
                                std::to_string(test.images.image_size()) + " pixels, the model's images " +
                                std::to_string(pipeline.info().data.image_size));
  }
  check_guidance(pipeline, options.guidance);
  sampling_steps(pipeline, options);
  PromptFollowingResult r;
  const int64_t canvas = test.images.image_size();
  Dataset cells_shape;  // (the cache key: the name and the image shape)
  cells_shape.name = "mnist-cells-" + std::to_string(canvas);
  cells_shape.images = torch::empty({0, 1, 28, 28}, torch::kUInt8);
  r.classifier_path = classifier_cache_path(cells_shape);
  ClassifierOptions co;
  co.progress = progress;
  auto classifier = load_or_train_classifier(
      r.classifier_path, 1, 28, 10, [&] { return digit_cells_dataset(load_mnist_train(), canvas); }, co);
  const auto real = measure_prompt_following(classifier, from_uint8(test.images.images), test.placements);
  r.real_both = real.both;
  r.classifier_accuracy = 0.5 * (real.first + real.second);
  // the captions of each kind, in the test split's order, cycled to n
  for (const bool unseen : {false, true}) {
    std::vector<DigitPlacement> placements;
    GenerateOptions g = options;
    g.prompts.clear();
    for (const auto& p : test.placements) {
      if (held_out(p) == unseen) placements.push_back(p);
    }
    if (placements.empty()) throw std::invalid_argument("prompt following: the test canvases hold no such captions");
    std::vector<DigitPlacement> asked;
    for (int64_t i = 0; i < g.n; ++i) {
      asked.push_back(placements[i % placements.size()]);
      g.prompts.push_back(caption_of(asked.back()));
    }
    const auto images = generate(pipeline, g, callback);
    (unseen ? r.unseen : r.seen) = measure_prompt_following(classifier, from_uint8(to_uint8(images)), asked);
  }
  return r;
}

}  // namespace diffuse
