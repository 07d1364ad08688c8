#include "diffuse/eval/prompt_following.h"

#include <stdexcept>

#include "diffuse/io/image.h"

namespace diffuse {

torch::Tensor digit_cells(const torch::Tensor& images, const std::vector<DigitPlacement>& placements) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == 1 && images.size(2) == images.size(3),
              "digit_cells: expected [N, 1, S, S] canvases, got ", images.sizes());
  TORCH_CHECK(images.size(0) == static_cast<int64_t>(placements.size()), "digit_cells: ", images.size(0),
              " images for ", placements.size(), " placements");
  const int64_t canvas = images.size(2);
  const auto pixels = to_uint8(images);
  std::vector<torch::Tensor> cells;
  for (int64_t i = 0; i < images.size(0); ++i) {
    for (const bool first : {true, false}) {
      const auto cell = cell_of(placements[i], first, canvas);
      const auto crop = pixels[i].narrow(1, cell.row, cell.size).narrow(2, cell.column, cell.size).unsqueeze(0);
      cells.push_back(resize_images(crop.contiguous(), 28));
    }
  }
  return from_uint8(torch::cat(cells));
}

Dataset digit_cells_dataset(const Dataset& mnist, int64_t canvas) {
  const int64_t half = canvas / 2;  // the sizes of captioned_digits.h: S/2, and S/2 · 5/8 for a small digit
  Dataset out;
  out.name = mnist.name + "-cells-" + std::to_string(canvas);
  out.num_classes = mnist.num_classes;
  out.images = torch::cat({resize_images(resize_images(mnist.images, half), 28),
                           resize_images(resize_images(mnist.images, half * 5 / 8), 28)});
  out.labels = torch::cat({mnist.labels, mnist.labels});
  return out;
}

PromptFollowing measure_prompt_following(FeatureClassifier& classifier, const torch::Tensor& images,
                                         const std::vector<DigitPlacement>& placements) {
  if (placements.empty()) throw std::invalid_argument("prompt following: no images");
  const auto predicted = classifier_outputs(classifier, digit_cells(images, placements)).second.argmax(1).view({-1, 2});
  std::vector<int64_t> asked;
  for (const auto& p : placements) {
    asked.push_back(p.first);
    asked.push_back(p.second);
  }
  const auto right = predicted.eq(torch::tensor(asked, torch::kLong).view({-1, 2})).to(torch::kFloat64);
  PromptFollowing out;
  out.images = static_cast<int64_t>(placements.size());
  out.both = right.prod(1).mean().item<double>();
  out.first = right.select(1, 0).mean().item<double>();
  out.second = right.select(1, 1).mean().item<double>();
  return out;
}

}  // namespace diffuse
