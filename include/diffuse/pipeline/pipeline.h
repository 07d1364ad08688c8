// The library's entry points, for a program that wants diffusion without the CLI:
//
//   auto pipe = diffuse::load_pipeline("runs/mnist/checkpoint.safetensors");
//   diffuse::GenerateOptions g;
//   g.n = 16;
//   auto images = diffuse::generate(pipe, g);          // [16, 1, 28, 28] in [−1, 1], on the CPU
//
// A checkpoint is loaded once; its network is handed to the samplers, the editing methods and
// the evaluations as one denoiser that runs under the run's precision, applies classifier-free
// guidance on class-conditional models, and replays its calls from a CUDA graph on a GPU.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <optional>
#include <string>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/data/captioned_digits.h"
#include "diffuse/data/dataset.h"
#include "diffuse/eval/classifier.h"
#include "diffuse/eval/frechet.h"
#include "diffuse/eval/nll.h"
#include "diffuse/eval/prompt_following.h"
#include "diffuse/pipeline/compute.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/sampling/sampler.h"

namespace diffuse {

// A model with its diffusion process and how it computes.
struct Pipeline {
  LoadedCheckpoint checkpoint;
  GaussianDiffusion diffusion;
  Compute compute;

  const CheckpointInfo& info() const { return checkpoint.info; }
  // [C, H, W] of the images the model makes
  std::vector<int64_t> image_shape() const;
};

// Loads a checkpoint onto compute.device, in compute.memory_format, in eval mode.
Pipeline load_pipeline(const std::string& checkpoint_path, const Compute& compute = {});

// The network as samplers see it: (x_t, t, y) → its raw output (ε or x_0 per the objective),
// under compute.precision, guided with weight w ≥ 0 where the model is class- or text-conditional
// (ε̃ = (1 + w) ε(x, y) − w ε(x, ∅); w = 0: the conditional network; y undefined: ∅). y: [B]
// labels, or [B, L] token ids (encode_prompts). `negative`: the row that takes ∅'s place in
// guidance (a negative prompt's ids [L]); undefined: ∅.
ConditionalDenoiser make_denoiser(const Pipeline& pipeline, double guidance = 0.0, const torch::Tensor& negative = {});
// The same without labels (∅ on class-conditional models): NLL, editing.
Denoiser make_unconditional_denoiser(const Pipeline& pipeline);

struct GenerateOptions {
  SamplerConfig sampler;   // ddim, η = 0, leading spacing
  int64_t steps = 0;       // 0: T for ddpm, 50 for the others
  int64_t n = 64;
  int64_t batch_size = 256;
  uint64_t seed = 0;       // same seed, same images
  torch::Tensor labels;    // [n] int64 for class-conditional models; undefined: ∅
  // Text-conditional models: one prompt for every image, or one per image (else ∅, the empty
  // prompt); the negative prompt takes ∅'s place in guidance.
  std::vector<std::string> prompts;
  std::string negative_prompt;
  // Image-conditional models: the condition channels [1 or n, C', H, W] (diffusion/image_condition.h:
  // inpaint_condition, super_resolution_condition); undefined: ∅ (nothing known).
  torch::Tensor image_conditions;
  double guidance = 0.0;
  bool clip_x0 = true;
};

// The token ids [n, L] of prompts for a text-conditional pipeline: one prompt for all n images, or
// n prompts. Throws naming the words its vocabulary lacks and a prompt longer than its rows.
torch::Tensor encode_prompts(const Pipeline& pipeline, const std::vector<std::string>& prompts, int64_t n);

// The options the checkpoint's own sampling defaults give (spacing, clipping, DDPM's variance).
GenerateOptions default_generate_options(const Pipeline& pipeline);

// S for these options: `steps`, else T for ddpm and 50 for the others; throws where S > T.
int64_t sampling_steps(const Pipeline& pipeline, const GenerateOptions& options);

// n images [n, C, H, W] in [−1, 1] on the CPU; the callback sees every step of every batch. With
// `on_batch`, each finished batch (in [−1, 1]) goes to it instead and the result is undefined.
torch::Tensor generate(const Pipeline& pipeline, const GenerateOptions& options, const BatchStepCallback& callback = {},
                       const BatchDoneCallback& on_batch = {});

// The NLL bound in bits/dim on `data` (eval/nll.h) with the pipeline's network: of a
// text-conditional model on captioned data, the conditional −log p(x_0 | caption) unless
// `unconditional`; else (and for class-conditional models) with ∅.
NllResult evaluate_nll(const Pipeline& pipeline, const Dataset& data, const NllOptions& options,
                       bool unconditional = false);

struct CfidResult {
  double cfid = 0.0;                 // classifier-Fréchet distance (not comparable with Inception FID)
  double classifier_accuracy = 0.0;  // on the reference
  double entropy_generated = 0.0, entropy_reference = 0.0;  // of the predicted classes, nats
  int64_t images = 0;
  // As many images of the training split (drawn with options.seed) against the same reference: a
  // perfect model's cFID at this n, the upward bias that few images carry.
  double cfid_real = 0.0;
  std::string classifier_path;       // where the classifier is cached
};
// The reference side of cFID, computed once for any number of image sets: the data set's classifier
// (cached in cache_directory(); trained on `load_training_split()` the first time) and the
// reference's features' statistics, accuracy and class entropy.
class CfidReference {
 public:
  CfidReference(const Dataset& reference, std::function<Dataset()> load_training_split, bool progress = true);
  // Compares images [N, C, H, W] in [−1, 1] with the reference, and N real training images drawn
  // with `seed` likewise (cfid_real; the training split is loaded once, on the first call).
  CfidResult score(const torch::Tensor& images, uint64_t seed);

 private:
  const Dataset& training_split();

  int64_t channels_, image_size_;
  std::function<Dataset()> load_training_split_;
  std::optional<Dataset> training_;
  std::string classifier_path_;
  FeatureClassifier classifier_{nullptr};
  GaussianStats reference_statistics_;
  double reference_accuracy_ = 0.0, reference_entropy_ = 0.0;
};
// One image set against `reference`: CfidReference(reference, load_training_split, progress).score(images, seed).
CfidResult images_cfid(const torch::Tensor& images, const Dataset& reference,
                       const std::function<Dataset()>& load_training_split, uint64_t seed, bool progress = true);
// Generates options.n images and compares them as images_cfid does. Class-conditional models get
// balanced labels (image i: class i mod K) unless options.labels says otherwise, text-conditional
// ones the reference's captions, image-conditional ones the conditions of the reference's images
// (inpainting: masks drawn from options.seed).
CfidResult evaluate_cfid(const Pipeline& pipeline, const GenerateOptions& options, const Dataset& reference,
                         const std::function<Dataset()>& load_training_split, bool progress = true,
                         const BatchStepCallback& callback = {});

// Prompt following of a model trained on the captioned digits (eval/prompt_following.h): options.n
// images drawn from the captions of `test` (captioned-digits' test split) it saw in training, and
// options.n from those it never saw (the held-out triples), each cell read by a classifier of
// digits as the cells hold them (cached beside the cFID's; trained on
// digit_cells_dataset(load_mnist_train()) the first time).
struct PromptFollowingResult {
  PromptFollowing seen, unseen;
  double classifier_accuracy = 0.0;  // on the digits of the test canvases' cells, as placed
  double real_both = 0.0;            // the measure on the test canvases themselves: its ceiling
  std::string classifier_path;
};
PromptFollowingResult evaluate_prompt_following(const Pipeline& pipeline, const GenerateOptions& options,
                                                const CaptionedDigits& test,
                                                const std::function<Dataset()>& load_mnist_train, bool progress = true,
                                                const BatchStepCallback& callback = {});

}  // namespace diffuse
