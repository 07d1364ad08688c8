#include "diffuse/eval/nll.h"

#include "diffuse/runtime/device.h"

#include <cmath>

#include "diffuse/io/image.h"
#include "diffuse/sampling/sampler.h"
#include "diffuse/util/progress.h"

namespace diffuse {

namespace {

Estimate estimate_of(const torch::Tensor& per_image) {
  Estimate e;
  e.mean = per_image.mean().item<double>();
  const int64_t n = per_image.numel();
  e.standard_error = n > 1 ? per_image.std().item<double>() / std::sqrt(static_cast<double>(n)) : 0.0;
  return e;
}

}  // namespace

NllResult evaluate_nll(const Denoiser& network, const GaussianDiffusion& diffusion, const Dataset& data,
                       const NllOptions& o) {
  const ConditionalDenoiser ignoring_y = [&network](const torch::Tensor& x, const torch::Tensor& t,
                                                    const torch::Tensor&) { return network(x, t); };
  return evaluate_nll(ignoring_y, diffusion, data, torch::Tensor(), o);
}

NllResult evaluate_nll(const ConditionalDenoiser& conditional_network, const GaussianDiffusion& diffusion,
                       const Dataset& data, const torch::Tensor& conditions, const NllOptions& o) {
  TORCH_CHECK(!conditions.defined() || conditions.size(0) == data.size(), "evaluate_nll: ", conditions.sizes(),
              " conditions for ", data.size(), " images");
  TORCH_CHECK(o.n > 0 && o.batch_size > 0, "evaluate_nll: n and batch size must be positive");
  const auto& s = diffusion.schedule();
  const int64_t T = s.timesteps();
  TORCH_CHECK(T >= 2, "evaluate_nll: needs T >= 2");
  const int64_t n = std::min(o.n, data.size());
  const auto device = diffusion.device();
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(o.seed);

  const int64_t evals = o.exact ? T : o.t_samples + 1;
  ProgressBar bar(o.exact ? "nll (exact)" : "nll (monte carlo)", n * evals, 0, o.progress);
  std::vector<torch::Tensor> prior_all, terms_all, decoder_all;
  int64_t done = 0;
  for (int64_t start = 0; start < n; start += o.batch_size) {
    const int64_t b = std::min(o.batch_size, n - start);
    auto x0 = from_uint8(data.images.narrow(0, start, b)).to(device);
    // the batch's conditions c: every term is then one of −log p(x_0 | c)
    const auto y = conditions.defined() ? conditions.narrow(0, start, b).to(device) : torch::Tensor();
    const auto network = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
      return conditional_network(x_t, t, y);
    };
    // The terms at per-image 0-based indices t: draw x_t ~ q(x_t|x_0), ask the network, compare.
    auto terms_at = [&](const torch::Tensor& t_cpu) {
      auto t = to_device_async(t_cpu, device);
      auto noise = randn_like_from(x0, gen);  // from the CPU generator, as the timesteps
      auto x_t = diffusion.q_sample(x0, t, noise);
      auto pred = diffusion.split_model_output(network(x_t, t), x_t, t, /*clip_x0=*/false);
      done += b;
      bar.update(done);
      return vb_term_bpd(diffusion, o.variance, x0, x_t, t, pred).cpu();
    };
    auto terms = torch::zeros({b}, torch::kFloat64);
    if (o.exact) {
      for (int64_t index = T - 1; index >= 1; --index) terms += terms_at(torch::full({b}, index, torch::kLong));
    } else {
      // (T − 1) · mean_k L_{t_k − 1}, with t_k ~ U{2..T} drawn independently for every image
      for (int64_t k = 0; k < o.t_samples; ++k) terms += terms_at(torch::randint(1, T, {b}, gen, torch::kLong));
      terms *= static_cast<double>(T - 1) / static_cast<double>(o.t_samples);
    }
    decoder_all.push_back(terms_at(torch::zeros({b}, torch::kLong)));  // L_0
    terms_all.push_back(terms);
    prior_all.push_back(prior_bpd(s, x0).cpu());  // L_T
  }
  bar.finish();

  NllResult r;
  auto prior = torch::cat(prior_all), terms = torch::cat(terms_all), decoder = torch::cat(decoder_all);
  r.prior = estimate_of(prior);
  r.terms = estimate_of(terms);
  r.decoder = estimate_of(decoder);
  r.total = estimate_of(prior + terms + decoder);
  r.images = n;
  r.network_evaluations = evals;
  r.exact = o.exact;
  return r;
}

}  // namespace diffuse
