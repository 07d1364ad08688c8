// Editing: noise-and-denoise, DDIM inversion, inpainting and slerp, on data whose ideal denoiser
// is known in closed form (a single point, or a Gaussian), so the right answer is known too.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/edit/ddim_inversion.h"
#include "diffuse/edit/inpaint.h"
#include "diffuse/edit/interpolate.h"
#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ddpm.h"

using namespace diffuse;

namespace {

GaussianDiffusion make_diffusion() { return GaussianDiffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU); }

// Data concentrated at one image `point`: the ideal ε̂ = (x_t − √ᾱ_t point)/√(1 − ᾱ_t).
Denoiser point_denoiser(const GaussianDiffusion& d, torch::Tensor point) {
  return [&d, point](const torch::Tensor& x, const torch::Tensor& t) {
    return d.predict_eps_from_x0(x, t, point.expand_as(x));
  };
}

// Data x_0 ~ N(μ, s²) per pixel: ε̂ = √(1 − ᾱ)(x_t − √ᾱ μ)/(ᾱ s² + 1 − ᾱ).
Denoiser gaussian_denoiser(const GaussianDiffusion& d, double mu, double s) {
  return [&d, mu, s](const torch::Tensor& x, const torch::Tensor& t) {
    const double ab = d.schedule().alpha_bar_at(t[0].item<int64_t>());
    return (std::sqrt(1.0 - ab) / (ab * s * s + 1.0 - ab)) * (x - std::sqrt(ab) * mu);
  };
}

}  // namespace

TEST(Edit, NoiseAndDenoiseReturnsThePointAndTheNoiseLevel) {
  auto d = make_diffusion();
  auto point = torch::rand({1, 1, 4, 4}) * 1.6 - 0.8;
  DdimSampler ddim(d.schedule(), TimestepSpacing::trailing, 0.0);
  auto gen = at::detail::createCPUGenerator(3);
  auto x0 = point.expand({2, 1, 4, 4}).clone();
  auto out = noise_and_denoise(d, ddim, point_denoiser(d, point), x0, 499, 20, true, gen);
  EXPECT_EQ(out.t, 499);  // trailing spacing starts exactly at t
  EXPECT_LT((out.result - x0).abs().max().item<double>(), 1e-4);
  // x_t carries the right amount of signal: its mean is √ᾱ_t x_0 up to noise.
  EXPECT_GT((out.x_t - x0).abs().max().item<double>(), 0.1);
  DdimSampler leading(d.schedule(), TimestepSpacing::leading, 0.0);
  EXPECT_EQ(noise_and_denoise(d, leading, point_denoiser(d, point), x0, 499, 20, true, gen).t, 475);
  EXPECT_THROW(noise_and_denoise(d, ddim, point_denoiser(d, point), x0, 1000, 20, true, gen), std::invalid_argument);
  EXPECT_THROW(noise_and_denoise(d, ddim, point_denoiser(d, point), x0, 10, 20, true, gen), std::invalid_argument);
  // One ε given for the batch: two copies of an image are noised alike (edit mix's columns);
  // drawn, they are not.
  const auto eps = torch::randn({1, 1, 4, 4});
  auto shared = noise_and_denoise(d, ddim, point_denoiser(d, point), x0, 499, 20, true, gen, eps);
  EXPECT_TRUE(torch::equal(shared.x_t[0], shared.x_t[1]));
  EXPECT_FALSE(torch::equal(out.x_t[0], out.x_t[1]));
  const double ab = d.schedule().alpha_bar_at(499);  // x_t = √ᾱ x_0 + √(1 − ᾱ) ε, with the ε given
  EXPECT_TRUE(torch::allclose(shared.x_t[0], std::sqrt(ab) * x0[0] + std::sqrt(1 - ab) * eps[0], 1e-5, 1e-6));
  EXPECT_THROW(noise_and_denoise(d, ddim, point_denoiser(d, point), x0, 499, 20, true, gen, torch::randn({3, 1, 4, 4})),
               c10::Error);
  EXPECT_EQ(timestep_for_strength(0.5, 1000), 499);
  EXPECT_EQ(timestep_for_strength(1.0, 1000), 999);
  EXPECT_THROW(timestep_for_strength(0.0, 1000), std::invalid_argument);
}

TEST(Edit, PsnrOfAKnownError) {
  auto a = torch::zeros({2, 1, 3, 3});
  auto b = a + 0.2;  // MSE 0.04 → 10 log10(4/0.04) = 20 dB
  auto p = psnr(a, b);
  EXPECT_NEAR(p[0].item<double>(), 20.0, 1e-5);  // 0.2 in float32
  EXPECT_NEAR(p[1].item<double>(), 20.0, 1e-5);
}

TEST(Edit, DdimInversionRoundTripsAndImprovesWithSteps) {
  // For Gaussian data the ODE is exact to invert; the discretised inversion's error must shrink.
  auto d = make_diffusion();
  const double mu = 0.3, s = 0.4;
  auto net = gaussian_denoiser(d, mu, s);
  torch::manual_seed(2);
  auto x0 = (mu + s * torch::randn({4, 1, 6, 6}, torch::kDouble));
  std::vector<double> errors;
  for (int64_t S : {10, 50, 250}) {
    auto x_T = ddim_invert(d, net, x0, S, TimestepSpacing::leading);
    auto back = ddim_decode(d, net, x_T, S, TimestepSpacing::leading);
    errors.push_back((back - x0).abs().max().item<double>());
    // The latent is nearly standard normal, as x_T should be: the flow maps N(μ, s²) onto it.
    if (S >= 50) EXPECT_NEAR(x_T.std().item<double>(), 1.0, 0.2) << S;
  }
  std::printf("  round-trip max error at S = 10, 50, 250: %.4f %.4f %.4f\n", errors[0], errors[1], errors[2]);
  EXPECT_LT(errors[1], 0.5 * errors[0]);
  EXPECT_LT(errors[2], 0.5 * errors[1]);
  EXPECT_LT(errors[2], 5e-2);
  // Trailing spacing: the grid's smallest timestep is T/S − 1 (19 at S = 50), where ᾱ is 0.98,
  // not ≈ 1. The inversion's first step takes the clean image there; the round trip must be as
  // close as with leading spacing.
  auto x_T = ddim_invert(d, net, x0, 50, TimestepSpacing::trailing);
  const double trailing = (ddim_decode(d, net, x_T, 50, TimestepSpacing::trailing) - x0).abs().max().item<double>();
  // The exact flow of N(μ, s²) data: x_t = √ᾱ_t μ + √(ᾱ_t s² + 1 − ᾱ_t) (x_0 − μ)/s.
  const double ab_T = d.schedule().alpha_bar_at(d.timesteps() - 1);
  auto exact = std::sqrt(ab_T) * mu + std::sqrt(ab_T * s * s + 1 - ab_T) * (x0 - mu) / s;
  const double latent = (x_T - exact).abs().max().item<double>();
  std::printf("  trailing spacing, S = 50: round-trip max error %.4f (leading %.4f), latent off the exact flow by %.4f\n",
              trailing, errors[1], latent);
  EXPECT_LT(trailing, 2 * errors[1] + 1e-3);
  EXPECT_LT(latent, 0.1);
}

TEST(Edit, InpaintKeepsKnownPixelsAndFillsTheHole) {
  auto d = make_diffusion();
  auto point = torch::full({1, 1, 4, 4}, 0.5);
  auto original = torch::full({1, 1, 4, 4}, -0.7);  // known pixels differ from what the model makes
  auto known = torch::zeros({1, 1, 4, 4});
  known.narrow(3, 0, 2).fill_(1);  // left half known
  for (int64_t resample : {0, 2}) {
    DdpmSampler ddpm(d.schedule(), TimestepSpacing::leading, false);
    auto gen = at::detail::createCPUGenerator(5);
    InpaintOptions options;
    options.steps = 25;
    options.resample = resample;
    auto out = inpaint(d, ddpm, point_denoiser(d, point), original, known, options, gen);
    EXPECT_TRUE(torch::equal(out.narrow(3, 0, 2), original.narrow(3, 0, 2))) << resample;
    EXPECT_LT((out.narrow(3, 2, 2) - 0.5).abs().max().item<double>(), 1e-4) << resample;
  }
  DdimSampler ddim(d.schedule(), TimestepSpacing::leading, 0.0);
  auto gen = at::detail::createCPUGenerator(5);
  EXPECT_THROW(inpaint(d, ddim, point_denoiser(d, point), original, torch::ones({1, 1, 3, 4}), InpaintOptions{}, gen),
               std::invalid_argument);
}

TEST(Edit, SlerpKeepsTheNormAndHitsTheEnds) {
  auto a = torch::zeros({4}), b = torch::zeros({4});
  a[0] = 2.0;
  b[1] = 2.0;
  EXPECT_TRUE(torch::allclose(slerp(a, b, 0.0), a));
  EXPECT_TRUE(torch::allclose(slerp(a, b, 1.0), b));
  auto mid = slerp(a, b, 0.5);
  EXPECT_NEAR(mid.norm().item<double>(), 2.0, 1e-6);             // the chord's midpoint has norm √2
  EXPECT_NEAR(mid[0].item<double>(), std::sqrt(2.0), 1e-6);
}
