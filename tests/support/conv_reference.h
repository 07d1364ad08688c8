// The float64 comparison shared by the tests of the own convolution kernels (conv_in's and
// conv_out's): random float32 inputs of one shape, LibTorch's conv2d on them in float64 (stride 1,
// padding k/2) as the reference, and the check of a kernel's output and gradients against it.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "networks.h"

namespace diffuse::testing {

struct ConvCase {
  int64_t n, c, o, h, w, k;
  bool bias;
  std::string name() const {
    return "n " + std::to_string(n) + " c " + std::to_string(c) + " o " + std::to_string(o) + " " + std::to_string(h) +
           "x" + std::to_string(w) + " k " + std::to_string(k);
  }
};

// x [n, c, h, w], weight [o, c, k, k] · 0.2, bias [o] (or undefined), ∂L/∂y [n, o, h, w]: float32.
struct ConvInputs {
  torch::Tensor x, weight, bias, grad_y;
};

inline ConvInputs random_conv_inputs(const ConvCase& s) {
  ConvInputs in;
  in.x = torch::randn({s.n, s.c, s.h, s.w});
  in.weight = torch::randn({s.o, s.c, s.k, s.k}) * 0.2;
  in.bias = s.bias ? torch::randn({s.o}) : torch::Tensor();
  in.grad_y = torch::randn({s.n, s.o, s.h, s.w});
  return in;
}

// y and ∂L/∂x, ∂L/∂W, ∂L/∂b (undefined without a bias), all NCHW-shaped.
struct ConvResult {
  torch::Tensor y, grad_x, grad_weight, grad_bias;
};

// LibTorch's conv2d of `in` and its backward from in.grad_y, in float64.
inline ConvResult conv2d_float64(const ConvInputs& in) {
  auto x = in.x.to(torch::kFloat64).requires_grad_(true), w = in.weight.to(torch::kFloat64).requires_grad_(true);
  auto b = in.bias.defined() ? in.bias.to(torch::kFloat64).requires_grad_(true) : torch::Tensor();
  auto y = torch::conv2d(x, w, b, 1, in.weight.size(2) / 2);
  y.backward(in.grad_y.to(torch::kFloat64));
  return {y, x.grad(), w.grad(), b.defined() ? b.grad() : torch::Tensor()};
}

// Every part of `got` within 1e-5 relative error of the float64 reference.
inline void expect_matches_reference(const ConvResult& got, const ConvResult& reference) {
  EXPECT_LT(relative_error(got.y.to(torch::kFloat64), reference.y), 1e-5);
  EXPECT_LT(relative_error(got.grad_x.to(torch::kFloat64), reference.grad_x), 1e-5);
  EXPECT_LT(relative_error(got.grad_weight.to(torch::kFloat64), reference.grad_weight), 1e-5);
  if (reference.grad_bias.defined()) {
    EXPECT_LT(relative_error(got.grad_bias.to(torch::kFloat64), reference.grad_bias), 1e-5);
  }
}

}  // namespace diffuse::testing
