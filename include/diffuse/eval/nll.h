// Negative log-likelihood bound in bits/dim over a data split (DDPM §4.2, Table 2):
//   bpd = L_T + Σ_{t=2..T} L_{t−1} + L_0, per image, averaged over images.
// Exact: all T terms (T network evaluations per image). Monte Carlo: Σ_{t=2..T} L_{t−1} is
// estimated without bias by (T − 1) · mean of L_{t−1} over K timesteps drawn uniformly from
// 2..T; L_T and L_0 are always exact. Standard errors are over images (and draws).
#pragma once

#include <string>

#include "diffuse/data/dataset.h"
#include "diffuse/diffusion/elbo.h"
#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

struct NllOptions {
  int64_t n = 256;            // images (the first n of the split)
  int64_t batch_size = 128;
  bool exact = false;         // all T terms instead of the Monte-Carlo estimate
  int64_t t_samples = 32;     // K, Monte Carlo only
  ModelVariance variance = ModelVariance::posterior;
  uint64_t seed = 0;
  bool progress = true;
};

struct Estimate {
  double mean = 0.0;
  double standard_error = 0.0;  // of the mean
};

struct NllResult {
  Estimate total, prior, terms, decoder;  // bits/dim: total = prior + terms + decoder
  int64_t images = 0;
  int64_t network_evaluations = 0;        // per image
  bool exact = false;
};

// `network` is the model's forward pass (its output per the diffusion's objective), in eval mode.
NllResult evaluate_nll(const Denoiser& network, const GaussianDiffusion& diffusion, const Dataset& data,
                       const NllOptions& options);
// The conditional bound on −log p(x_0 | c): image i's condition conditions[i] ([N] labels or
// [N, L] token ids of its caption) handed to the network with it.
NllResult evaluate_nll(const ConditionalDenoiser& network, const GaussianDiffusion& diffusion, const Dataset& data,
                       const torch::Tensor& conditions, const NllOptions& options);

}  // namespace diffuse
