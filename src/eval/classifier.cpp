#include "diffuse/eval/classifier.h"

#include <filesystem>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/util/progress.h"

namespace diffuse {

namespace F = torch::nn::functional;

FeatureClassifierImpl::FeatureClassifierImpl(int64_t channels, int64_t image_size, int64_t classes) {
  TORCH_CHECK(classes >= 2, "classifier: needs at least two classes, got ", classes);
  conv1 = register_module("conv1", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, 32, 3).padding(1)));
  conv2 = register_module("conv2", torch::nn::Conv2d(torch::nn::Conv2dOptions(32, 64, 3).padding(1)));
  const int64_t pooled = image_size / 2 / 2;
  fc1 = register_module("fc1", torch::nn::Linear(64 * pooled * pooled, 128));
  fc2 = register_module("fc2", torch::nn::Linear(128, classes));
}

torch::Tensor FeatureClassifierImpl::features(const torch::Tensor& x) {
  auto h = F::max_pool2d(torch::relu(conv1(x)), F::MaxPool2dFuncOptions(2));
  h = F::max_pool2d(torch::relu(conv2(h)), F::MaxPool2dFuncOptions(2));
  return torch::relu(fc1(h.flatten(1)));
}

FeatureClassifier train_classifier(const Dataset& train, const ClassifierOptions& o) {
  TORCH_CHECK(train.num_classes >= 2, "classifier: data set '", train.name, "' has no labels");
  torch::manual_seed(o.seed);
  FeatureClassifier model(train.channels(), train.image_size(), train.num_classes);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(o.lr));
  BatchLoader loader(train, o.batch_size, torch::kCPU);
  const int64_t steps = o.epochs * ((train.size() + o.batch_size - 1) / o.batch_size);
  ProgressBar bar("classifier", steps, 0, o.progress);
  model->train();
  for (int64_t step = 0; step < steps; ++step) {
    auto batch = loader.next();
    auto loss = F::cross_entropy(model->forward(batch.x0), batch.labels);
    optimizer.zero_grad();
    loss.backward();
    optimizer.step();
    bar.update(step + 1);
  }
  bar.finish();
  model->eval();
  return model;
}

std::pair<torch::Tensor, torch::Tensor> classifier_outputs(FeatureClassifier& model, const torch::Tensor& images,
                                                           int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<torch::Tensor> feats, logits;
  for (int64_t start = 0; start < images.size(0); start += batch_size) {
    auto f = model->features(images.narrow(0, start, std::min(batch_size, images.size(0) - start)).to(torch::kCPU));
    logits.push_back(model->logits_from_features(f));
    feats.push_back(f);
  }
  return {torch::cat(feats), torch::cat(logits)};
}

double classifier_accuracy(FeatureClassifier& model, const Dataset& data, int64_t batch_size) {
  return accuracy_of_logits(classifier_outputs(model, from_uint8(data.images), batch_size).second, data.labels);
}

double accuracy_of_logits(const torch::Tensor& logits, const torch::Tensor& labels) {
  return logits.argmax(1).eq(labels).to(torch::kFloat64).mean().item<double>();
}

FeatureClassifier load_or_train_classifier(const std::string& path, int64_t channels, int64_t image_size,
                                           int64_t classes, const std::function<Dataset()>& load_train,
                                           const ClassifierOptions& o) {
  if (std::filesystem::exists(path)) {
    FeatureClassifier model(channels, image_size, classes);
    load_named_state(*model, load_safetensors(path));
    model->eval();
    return model;
  }
  const Dataset train = load_train();
  TORCH_CHECK(train.channels() == channels && train.image_size() == image_size && train.num_classes == classes,
              "classifier: training split of '", train.name, "' does not match the evaluated images");
  auto model = train_classifier(train, o);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  save_safetensors(path, named_state(*model),
                   {{"data", train.name}, {"epochs", std::to_string(o.epochs)}, {"seed", std::to_string(o.seed)}});
  return model;
}

}  // namespace diffuse
