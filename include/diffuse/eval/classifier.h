// A small CNN classifier trained on a data set's training split; its penultimate layer is the
// feature space of the classifier-Fréchet distance (cFID). No Inception network is available
// offline, so cFID numbers are comparable only with other cFID numbers on the same data set
// and classifier — never call them FID.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>

#include "diffuse/data/dataset.h"

namespace diffuse {

// conv3×3(C→32) → ReLU → max-pool 2 → conv3×3(32→64) → ReLU → max-pool 2 → linear(→128) → ReLU
// [features] → linear(→K) [logits]
class FeatureClassifierImpl : public torch::nn::Module {
 public:
  FeatureClassifierImpl(int64_t channels, int64_t image_size, int64_t classes);
  torch::Tensor features(const torch::Tensor& x);  // [B, C, H, W] in [−1, 1] → [B, 128]
  torch::Tensor logits_from_features(const torch::Tensor& f) { return fc2(f); }
  torch::Tensor forward(const torch::Tensor& x) { return fc2(features(x)); }

 private:
  torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(FeatureClassifier);

struct ClassifierOptions {
  int64_t epochs = 2;
  int64_t batch_size = 128;
  double lr = 1e-3;
  uint64_t seed = 0;
  bool progress = true;
};

// Trains on `train` (which must be labelled).
FeatureClassifier train_classifier(const Dataset& train, const ClassifierOptions& options);
// Fraction of `data` classified correctly.
double classifier_accuracy(FeatureClassifier& model, const Dataset& data, int64_t batch_size = 512);
// The same from logits [N, classes] already computed for labels [N].
double accuracy_of_logits(const torch::Tensor& logits, const torch::Tensor& labels);
// Features and logits of [N, C, H, W] images in [−1, 1], in batches, without gradients.
std::pair<torch::Tensor, torch::Tensor> classifier_outputs(FeatureClassifier& model, const torch::Tensor& images,
                                                           int64_t batch_size = 512);

// The cached classifier for images of channels × size² and `classes` classes: loaded from `path`,
// or (only then) trained on `load_train()` with a fixed seed and written there atomically.
FeatureClassifier load_or_train_classifier(const std::string& path, int64_t channels, int64_t image_size,
                                           int64_t classes, const std::function<Dataset()>& load_train,
                                           const ClassifierOptions& options);

}  // namespace diffuse
