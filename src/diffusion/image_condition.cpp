#include "diffuse/diffusion/image_condition.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace diffuse {

namespace F = torch::nn::functional;

std::string to_string(ImageConditionKind kind) {
  return kind == ImageConditionKind::inpaint ? "inpaint" : "super-resolution";
}

ImageConditionKind image_condition_kind_from_string(const std::string& name) {
  if (name == "inpaint") return ImageConditionKind::inpaint;
  if (name == "super-resolution") return ImageConditionKind::super_resolution;
  throw std::invalid_argument("unknown image condition '" + name + "' (inpaint | super-resolution)");
}

int64_t condition_channels(const ImageCondition& condition, int64_t image_channels) {
  return condition.kind == ImageConditionKind::inpaint ? image_channels + 1 : image_channels;
}

void check_image_condition(const ImageCondition& condition, int64_t image_size) {
  if (condition.kind != ImageConditionKind::super_resolution) return;
  if (condition.factor < 2 || condition.factor > image_size || image_size % condition.factor != 0) {
    throw std::invalid_argument("super-resolution factor " + std::to_string(condition.factor) +
                                " must be at least 2 and divide the image size " + std::to_string(image_size));
  }
}

torch::Tensor inpaint_condition(const torch::Tensor& x0, const torch::Tensor& known) {
  TORCH_CHECK(x0.dim() == 4 && known.dim() == 4 && known.size(1) == 1 && known.size(2) == x0.size(2) &&
                  known.size(3) == x0.size(3) && (known.size(0) == 1 || known.size(0) == x0.size(0)),
              "inpaint_condition: images ", x0.sizes(), " and masks ", known.sizes());
  const auto m = known.to(x0.dtype()).expand({x0.size(0), 1, x0.size(2), x0.size(3)});
  return torch::cat({x0 * m, m}, 1);
}

torch::Tensor downsample_mean(const torch::Tensor& x0, int64_t factor) {
  TORCH_CHECK(x0.dim() == 4 && factor >= 1 && x0.size(2) % factor == 0 && x0.size(3) % factor == 0,
              "downsample_mean: ", x0.sizes(), " by ", factor);
  return F::avg_pool2d(x0, F::AvgPool2dFuncOptions(factor).stride(factor));
}

torch::Tensor upsample_bicubic(const torch::Tensor& low, int64_t size) {
  TORCH_CHECK(low.dim() == 4, "upsample_bicubic: expected [B, C, h, w], got ", low.sizes());
  return F::interpolate(low, F::InterpolateFuncOptions()
                                 .size(std::vector<int64_t>{size, size})
                                 .mode(torch::kBicubic)
                                 .align_corners(false))
      .clamp(-1.0, 1.0);
}

torch::Tensor super_resolution_condition(const torch::Tensor& x0, int64_t factor) {
  return upsample_bicubic(downsample_mean(x0, factor), x0.size(2));
}

torch::Tensor random_known_masks(int64_t n, int64_t size, c10::optional<at::Generator> gen) {
  if (n < 0 || size < 1) throw std::invalid_argument("random_known_masks: n and size must be positive");
  constexpr int64_t kDraws = 96;  // random numbers per image, drawn in one call
  const auto u = torch::rand({n, kDraws}, std::move(gen), torch::kFloat64);
  const auto draws = u.accessor<double, 2>();
  auto masks = torch::ones({n, 1, size, size});
  auto m = masks.accessor<float, 4>();
  const double s = static_cast<double>(size);
  for (int64_t i = 0; i < n; ++i) {
    int64_t next = 0;
    auto draw = [&] { return draws[i][next++ % kDraws]; };
    // a rectangle with sides in [s/4, 3s/4] at a uniform position: [y0, y1) × [x0, x1)
    auto rectangle = [&](int64_t& y0, int64_t& y1, int64_t& x0, int64_t& x1) {
      const int64_t h = std::clamp<int64_t>(std::lround(s / 4 + draw() * s / 2), 1, size);
      const int64_t w = std::clamp<int64_t>(std::lround(s / 4 + draw() * s / 2), 1, size);
      y0 = std::min<int64_t>(static_cast<int64_t>(draw() * (size - h + 1)), size - h);
      x0 = std::min<int64_t>(static_cast<int64_t>(draw() * (size - w + 1)), size - w);
      y1 = y0 + h;
      x1 = x0 + w;
    };
    const int64_t kind = std::min<int64_t>(static_cast<int64_t>(draw() * 4), 3);
    if (kind == 0 || kind == 3) {  // a hole, or everything but the rectangle
      int64_t y0, y1, x0, x1;
      rectangle(y0, y1, x0, x1);
      for (int64_t y = 0; y < size; ++y)
        for (int64_t x = 0; x < size; ++x) {
          const bool inside = y >= y0 && y < y1 && x >= x0 && x < x1;
          m[i][0][y][x] = (kind == 0) == inside ? 0.0f : 1.0f;
        }
    } else if (kind == 1) {  // brush strokes: random walks of discs of radius r
      const int64_t strokes = 1 + std::min<int64_t>(static_cast<int64_t>(draw() * 4), 3);
      for (int64_t k = 0; k < strokes; ++k) {
        double py = draw() * s, px = draw() * s, angle = draw() * 2 * M_PI;
        const double r = s * (0.04 + 0.05 * draw());
        const int64_t segments = 3 + static_cast<int64_t>(draw() * 5);
        for (int64_t g = 0; g < segments; ++g) {
          angle += (draw() - 0.5) * M_PI;
          const double length = s * (0.1 + 0.15 * draw());
          for (double d = 0; d <= length; d += 0.5) {  // discs every half pixel along the segment
            const double cy = py + d * std::sin(angle), cx = px + d * std::cos(angle);
            const int64_t ylo = std::max<int64_t>(0, std::floor(cy - r)),
                          yhi = std::min<int64_t>(size - 1, std::ceil(cy + r));
            const int64_t xlo = std::max<int64_t>(0, std::floor(cx - r)),
                          xhi = std::min<int64_t>(size - 1, std::ceil(cx + r));
            for (int64_t y = ylo; y <= yhi; ++y)
              for (int64_t x = xlo; x <= xhi; ++x)
                if ((y + 0.5 - cy) * (y + 0.5 - cy) + (x + 0.5 - cx) * (x + 0.5 - cx) <= r * r) m[i][0][y][x] = 0.0f;
          }
          py = std::clamp(py + length * std::sin(angle), 0.0, s);
          px = std::clamp(px + length * std::cos(angle), 0.0, s);
        }
      }
    } else {  // a half plane: left, right, top or bottom
      const int64_t side = std::min<int64_t>(static_cast<int64_t>(draw() * 4), 3), half = size / 2;
      for (int64_t y = 0; y < size; ++y)
        for (int64_t x = 0; x < size; ++x) {
          const bool hole = side == 0 ? x < half : side == 1 ? x >= half : side == 2 ? y < half : y >= half;
          if (hole) m[i][0][y][x] = 0.0f;
        }
    }
  }
  return masks;
}

torch::Tensor training_condition(const ImageCondition& condition, const torch::Tensor& x0,
                                 c10::optional<at::Generator> gen) {
  if (condition.kind == ImageConditionKind::super_resolution) return super_resolution_condition(x0, condition.factor);
  const auto known = random_known_masks(x0.size(0), x0.size(2), std::move(gen)).to(x0.device(), x0.scalar_type());
  return inpaint_condition(x0, known);
}

}  // namespace diffuse
