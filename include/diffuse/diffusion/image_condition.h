// Image conditions c for ε_θ(x_t, t, c): channels concatenated to x_t at the network's input.
//
//   inpainting:        c = [x_0 ⊙ m, m]                  (C + 1 channels; m = 1 where the pixel is known)
//   super-resolution:  c = up_f(down_f(x_0))             (C channels; down_f: the mean of each f×f block,
//                                                         up_f: bicubic back to the full size)
//
// ∅ is c = 0 for both (nothing known, no low-resolution image): training replaces a condition by ∅
// with probability p (as labels, diffusion/label_dropout.h), so that classifier-free guidance
// (sampling/guidance.h) works as for classes.
#pragma once

#include <torch/torch.h>

#include <string>

namespace diffuse {

enum class ImageConditionKind { inpaint, super_resolution };
std::string to_string(ImageConditionKind kind);  // "inpaint", "super-resolution"
ImageConditionKind image_condition_kind_from_string(const std::string& name);

struct ImageCondition {
  ImageConditionKind kind = ImageConditionKind::inpaint;
  int64_t factor = 4;  // super-resolution: the low-resolution image is (size / factor)²
};

// The channels c adds for images of `image_channels` channels: C + 1 (inpainting), C (super-resolution).
int64_t condition_channels(const ImageCondition& condition, int64_t image_channels);
// Throws naming the rule where `condition` cannot apply to images of this size (factor ≥ 2 dividing it).
void check_image_condition(const ImageCondition& condition, int64_t image_size);

// Inpainting: x0 [B, C, H, W], known [B or 1, 1, H, W] in {0, 1} → c = [x0 ⊙ known, known] [B, C + 1, H, W].
torch::Tensor inpaint_condition(const torch::Tensor& x0, const torch::Tensor& known);

// Super-resolution: the mean of each factor × factor block: [B, C, H, W] → [B, C, H/f, W/f].
torch::Tensor downsample_mean(const torch::Tensor& x0, int64_t factor);
// Bicubic interpolation to size × size, clamped to [−1, 1] (the baseline a model must beat).
torch::Tensor upsample_bicubic(const torch::Tensor& low, int64_t size);
// c = upsample_bicubic(downsample_mean(x0, f), H).
torch::Tensor super_resolution_condition(const torch::Tensor& x0, int64_t factor);

// Training masks [n, 1, size, size] (1 = known), drawn from `gen` (default: the global CPU
// generator): a quarter each of holes that are rectangles (sides in [size/4, 3·size/4]), brush
// strokes (1–4 random walks of discs) or half planes (left, right, top or bottom), and of
// everything outside a rectangle (outpainting).
torch::Tensor random_known_masks(int64_t n, int64_t size, c10::optional<at::Generator> gen = c10::nullopt);

// The condition of each image of a training batch x0 [B, C, H, W]: inpainting with
// random_known_masks(gen), super-resolution from x0 itself; on x0's device and dtype.
torch::Tensor training_condition(const ImageCondition& condition, const torch::Tensor& x0,
                                 c10::optional<at::Generator> gen = c10::nullopt);

}  // namespace diffuse
