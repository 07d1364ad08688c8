#include "diffuse/model/unet_flops.h"

#include <algorithm>
#include <vector>

namespace diffuse {

namespace {

// k×k convolution from c_in to c_out channels producing an h×h map: 2 c_in c_out k² h².
double conv(double c_in, double c_out, double k, double h) { return 2 * c_in * c_out * k * k * h * h; }
double linear(double in, double out) { return 2 * in * out; }

double res_block(double c_in, double c_out, double time_dim, double h) {
  double f = conv(c_in, c_out, 3, h) + linear(time_dim, c_out) + conv(c_out, c_out, 3, h);
  if (c_in != c_out) f += conv(c_in, c_out, 1, h);  // 1×1 shortcut
  return f;
}

// qkv (1×1, C → 3C), QᵀK and V·softmax over N = h² positions, the output projection (1×1).
double attention(double c, double h) {
  const double n = h * h;
  return conv(c, 3 * c, 1, h) + 2 * (2 * n * n * c) + conv(c, c, 1, h);
}

}  // namespace

double unet_forward_flops(const UNetConfig& c) {
  auto has_attention = [&](int64_t r) { return c.has_attention_at(r); };
  const double time_dim = static_cast<double>(c.time_embed_dim());
  double flops = linear(static_cast<double>(c.channels), time_dim) + linear(time_dim, time_dim);
  flops += conv(static_cast<double>(c.in_channels + c.extra_in_channels), static_cast<double>(c.channels), 3,
                static_cast<double>(c.image_size));

  const int64_t levels = static_cast<int64_t>(c.channel_mult.size());
  std::vector<int64_t> resolution{c.image_size};
  for (int64_t l = 1; l < levels; ++l) resolution.push_back(c.downsampled(resolution.back()));
  std::vector<int64_t> skips{c.channels};
  int64_t width = c.channels;
  for (int64_t l = 0; l < levels; ++l) {
    const int64_t out = c.channels * c.channel_mult[l];
    const double h = static_cast<double>(resolution[l]);
    for (int64_t b = 0; b < c.num_res_blocks; ++b) {
      flops += res_block(static_cast<double>(width), static_cast<double>(out), time_dim, h);
      width = out;
      if (has_attention(resolution[l])) flops += attention(static_cast<double>(width), h);
      skips.push_back(width);
    }
    if (l != levels - 1) {  // stride-2 conv, output at the next resolution
      flops += conv(static_cast<double>(width), static_cast<double>(width), 3, static_cast<double>(resolution[l + 1]));
      skips.push_back(width);
    }
  }
  const double h_mid = static_cast<double>(resolution.back());
  flops += 2 * res_block(static_cast<double>(width), static_cast<double>(width), time_dim, h_mid);
  if (c.mid_attention) flops += attention(static_cast<double>(width), h_mid);
  for (int64_t l = levels - 1; l >= 0; --l) {
    const int64_t out = c.channels * c.channel_mult[l];
    const double h = static_cast<double>(resolution[l]);
    for (int64_t b = 0; b <= c.num_res_blocks; ++b) {
      flops += res_block(static_cast<double>(width + skips.back()), static_cast<double>(out), time_dim, h);
      skips.pop_back();
      width = out;
      if (has_attention(resolution[l])) flops += attention(static_cast<double>(width), h);
    }
    if (l != 0) flops += conv(static_cast<double>(width), static_cast<double>(width), 3, static_cast<double>(resolution[l - 1]));
  }
  flops += conv(static_cast<double>(c.channels * c.channel_mult[0]), static_cast<double>(c.in_channels), 3,
                static_cast<double>(c.image_size));
  return flops;
}

}  // namespace diffuse
