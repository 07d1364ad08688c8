#include "diffuse/runtime/blocked_layout.h"

namespace diffuse {

torch::Tensor to_blocked(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) % kChannelBlock == 0, "to_blocked: expected [N, C, H, W] with C a multiple of ",
              kChannelBlock, ", got ", x.sizes());
  const auto n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return x.reshape({n, c / kChannelBlock, kChannelBlock, h, w}).permute({0, 1, 3, 4, 2}).contiguous();
}

torch::Tensor from_blocked(const torch::Tensor& x5) {
  TORCH_CHECK(x5.dim() == 5 && x5.size(4) == kChannelBlock, "from_blocked: expected [N, C/16, H, W, 16], got ",
              x5.sizes());
  const auto n = x5.size(0), cb = x5.size(1), h = x5.size(2), w = x5.size(3);
  return x5.permute({0, 1, 4, 2, 3}).reshape({n, cb * kChannelBlock, h, w}).contiguous();
}

}  // namespace diffuse
