// Prompt following on the captioned digits (data/captioned_digits.h): a sample drawn from the
// caption "3 left of 8" follows it when the MNIST classifier reads a 3 in the cell the caption
// puts the first digit in and an 8 in the second's. The cells are cut out of the canvas and
// grown to the classifier's 28×28; the classifier is trained on MNIST digits shrunk to the cells'
// sizes and grown back the same way (digit_cells_dataset), so that it reads a cell as well as a
// digit: an MNIST classifier of sharp digits misreads about one blurred cell in four.
#pragma once

#include <torch/torch.h>

#include <vector>

#include "diffuse/data/captioned_digits.h"
#include "diffuse/eval/classifier.h"

namespace diffuse {

struct PromptFollowing {
  double both = 0.0;    // fraction of images with both digits read as their caption says
  double first = 0.0;   // the first digit alone
  double second = 0.0;  // the second alone
  int64_t images = 0;
};

// images: [N, 1, S, S] in [−1, 1] (S the canvas), placements[i] what image i was asked to show;
// classifier: a 28×28, 10-class classifier trained on digit_cells_dataset.
PromptFollowing measure_prompt_following(FeatureClassifier& classifier, const torch::Tensor& images,
                                         const std::vector<DigitPlacement>& placements);

// The cells of each image, as 8-bit pixels grown to 28 × 28 (data/dataset.h's resize_images) and
// back in [−1, 1]: [2N, 1, 28, 28], the first digits' cells at even rows, the second's at odd ones.
torch::Tensor digit_cells(const torch::Tensor& images, const std::vector<DigitPlacement>& placements);

// MNIST images as the canvases of `canvas` pixels hold them: each shrunk to a large and to a
// small digit's cell and grown back to 28 × 28, labels kept ([2N] images).
Dataset digit_cells_dataset(const Dataset& mnist, int64_t canvas);

}  // namespace diffuse
