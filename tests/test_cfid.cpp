// The Fréchet distance against closed forms, and the classifier-FID's behaviour on real data:
// near 0 between MNIST's test and train splits, large against noise or one repeated digit; the
// pipeline's CfidReference against one-off images_cfid calls.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/eval/classifier.h"
#include "diffuse/eval/frechet.h"
#include "diffuse/io/image.h"
#include "diffuse/pipeline/pipeline.h"
#include "diffuse/util/environment.h"
#include "support/temp_dir.h"

using namespace diffuse;

TEST(Frechet, MatchesTheClosedFormForDiagonalCovariances) {
  // Diagonal Σ: d² = Σ (μ₁ − μ₂)² + Σ (√a − √b)²
  GaussianStats a{torch::tensor({0.0, 1.0, -2.0}, torch::kFloat64), torch::diag(torch::tensor({1.0, 4.0, 0.25}, torch::kFloat64))};
  GaussianStats b{torch::tensor({1.0, 1.0, 0.0}, torch::kFloat64), torch::diag(torch::tensor({9.0, 1.0, 0.25}, torch::kFloat64))};
  const double expected = (1 + 0 + 4) + (std::pow(1 - 3, 2) + std::pow(2 - 1, 2) + 0);
  EXPECT_NEAR(frechet_distance(a, b), expected, 1e-10);
  EXPECT_NEAR(frechet_distance(a, a), 0.0, 1e-10);
}

TEST(Frechet, SquareRootOfARandomPsdMatrixSquaresBack) {
  torch::manual_seed(0);
  auto m = torch::randn({6, 6}, torch::kFloat64);
  auto s = m.matmul(m.t());
  auto r = sqrtm_psd(s);
  EXPECT_LT((r.matmul(r) - s).abs().max().item<double>(), 1e-10);
  // Sample statistics of N(0, diag(1, 4, 9, 0.25)): variances within a few standard errors.
  auto stats = feature_statistics(torch::randn({20000, 4}, torch::kFloat64) * torch::tensor({1.0, 2.0, 3.0, 0.5}, torch::kFloat64));
  const double var[] = {1.0, 4.0, 9.0, 0.25};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(stats.cov[i][i].item<double>(), var[i], 5 * var[i] * std::sqrt(2.0 / 20000));
  EXPECT_NEAR(stats.cov[0][1].item<double>(), 0.0, 5 * 2.0 / std::sqrt(20000.0));
}

TEST(ClassifierFid, IsNearZeroBetweenSplitsAndLargeForNoiseOrOneDigit) {
  auto train = load_dataset("mnist", Split::train, DataOptions{0, 6000});
  auto test = load_dataset("mnist", Split::test, DataOptions{0, 2000});
  ClassifierOptions o;
  o.epochs = 3;
  o.progress = false;
  auto clf = train_classifier(train, o);
  const double accuracy = classifier_accuracy(clf, test);
  EXPECT_GT(accuracy, 0.9);

  auto stats_of = [&](const torch::Tensor& images) { return feature_statistics(classifier_outputs(clf, images).first); };
  auto test_stats = stats_of(from_uint8(test.images));
  auto train_stats = stats_of(from_uint8(train.images.narrow(0, 0, 2000)));
  torch::manual_seed(1);
  auto noise_stats = stats_of(torch::rand({2000, 1, 28, 28}) * 2 - 1);
  auto first = from_uint8(test.images.narrow(0, 0, 1));
  auto one_digit_stats = stats_of(first.expand({2000, 1, 28, 28}) + 0.05 * torch::randn({2000, 1, 28, 28}));
  const double between = frechet_distance(test_stats, train_stats);
  const double noise = frechet_distance(test_stats, noise_stats);
  const double one_digit = frechet_distance(test_stats, one_digit_stats);
  std::printf("classifier accuracy %.4f; cFID test-train %.3f, test-noise %.1f, test-one-digit %.1f\n", accuracy, between,
              noise, one_digit);
  EXPECT_LT(between * 20, noise);
  EXPECT_LT(between * 20, one_digit);

  auto [f, logits] = classifier_outputs(clf, from_uint8(test.images));
  EXPECT_GT(predicted_class_entropy(logits), 0.95 * std::log(10.0));  // every digit predicted
  auto [f1, logits1] = classifier_outputs(clf, first.expand({50, 1, 28, 28}).contiguous());
  EXPECT_NEAR(predicted_class_entropy(logits1), 0.0, 1e-12);  // one class only
}

// The reference side computed once: several image sets scored against it give what one-off
// images_cfid calls give, and the training split is loaded once for the classifier and every floor.
TEST(CfidReference, ScoresManySetsAsOneOffCallsDoLoadingTheTrainingSplitOnce) {
  diffuse::testing::TempDir dir;
  EnvironmentSwitch cache("DIFFUSE_CACHE_DIR", dir.str(), true);
  const auto reference = load_dataset("mnist", Split::test, DataOptions{0, 500});
  int loads = 0;
  const auto load_training_split = [&] {
    ++loads;
    return load_dataset("mnist", Split::train, DataOptions{0, 1000});
  };
  CfidReference cfid(reference, load_training_split, /*progress=*/false);
  EXPECT_EQ(loads, 1);  // the classifier trained on it, then cached in dir
  const auto real = from_uint8(load_dataset("mnist", Split::train, DataOptions{0, 1200}).images.narrow(0, 1000, 200));
  torch::manual_seed(2);
  const auto noise = torch::rand({200, 1, 28, 28}) * 2 - 1;
  const auto real_score = cfid.score(real, 3), noise_score = cfid.score(noise, 3), again = cfid.score(real, 3);
  EXPECT_EQ(loads, 1);
  EXPECT_EQ(real_score.cfid, again.cfid);
  EXPECT_EQ(real_score.cfid_real, again.cfid_real);
  EXPECT_EQ(real_score.cfid_real, noise_score.cfid_real);  // the same 200 training images drawn with seed 3
  EXPECT_LT(real_score.cfid * 10, noise_score.cfid);
  EXPECT_GT(real_score.classifier_accuracy, 0.5);

  loads = 0;
  const auto once = images_cfid(noise, reference, load_training_split, 3, /*progress=*/false);
  EXPECT_EQ(loads, 1);  // the floor's images only: the classifier came from the cache
  EXPECT_NEAR(once.cfid, noise_score.cfid, 1e-9 * noise_score.cfid);
  EXPECT_EQ(once.cfid_real, noise_score.cfid_real);
  EXPECT_EQ(once.classifier_accuracy, noise_score.classifier_accuracy);
  EXPECT_EQ(once.entropy_reference, noise_score.entropy_reference);
  EXPECT_EQ(once.entropy_generated, noise_score.entropy_generated);
  EXPECT_THROW(cfid.score(torch::zeros({4, 1, 32, 32}), 0), c10::Error);  // not the reference's size
}
