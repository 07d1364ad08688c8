// The CUDA path, against the CPU: skipped where this build or machine has no GPU (CI), run by
// scripts/gpu-check on a machine with one.
#include <gtest/gtest.h>

#include "diffuse/data/dataset.h"
#include "diffuse/diffusion/gaussian_diffusion.h"
#include "diffuse/model/unet.h"
#include "diffuse/runtime/attention.h"
#include "diffuse/runtime/conv_epilogue_cuda.h"
#include "diffuse/runtime/cuda_graph_network.h"
#include "diffuse/runtime/device.h"
#include "diffuse/runtime/group_norm_cuda.h"
#include "diffuse/runtime/upsample_cuda.h"
#include "diffuse/sampling/ddim.h"
#include "diffuse/sampling/ddpm.h"
#include "diffuse/sampling/guidance.h"
#include "diffuse/sampling/sample_loop.h"
#include "diffuse/train/adamw.h"
#include "diffuse/train/train_step.h"
#include "diffuse/util/environment.h"
#include "support/networks.h"

using namespace diffuse;
using diffuse::testing::relative_error;

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device in this build or machine"

TEST(Cuda, ForwardMatchesTheCpuInEveryPrecisionAndFormat) {
  SKIP_WITHOUT_CUDA();
  auto net = diffuse::testing::random_unet("mnist", 1, 28, 7);
  auto x = torch::randn({8, 1, 28, 28});
  auto t = torch::randint(0, 1000, {8}, torch::kLong);
  torch::NoGradGuard no_grad;
  auto reference = net->forward(x, t);
  net->to(torch::kCUDA);
  const auto xc = x.cuda(), tc = t.cuda();
  // float32 (cuDNN may use TF32: 10-bit mantissa, hence the tolerance)
  EXPECT_LT(relative_error(net->forward(xc, tc), reference), 5e-3);
  {
    AutocastScope scope(torch::kCUDA, Precision::bf16);
    auto out = net->forward(xc, tc);
    EXPECT_EQ(out.scalar_type(), torch::kFloat32);
    EXPECT_LT(relative_error(out, reference), 0.05);
  }
  net->set_memory_format(MemoryFormat::channels_last);
  EXPECT_LT(relative_error(net->forward(xc, tc), reference), 5e-3);
  // Sampling's fast path: the network cast to bf16, channels-last, so that every GroupNorm takes
  // the own kernel (runtime/group_norm_cuda.h).
  net->to(torch::kBFloat16);
  auto out = net->forward(xc, tc);
  EXPECT_EQ(out.scalar_type(), torch::kFloat32);
  EXPECT_LT(relative_error(out.cpu(), reference), 0.05);
}

// Gradients on the GPU against the CPU's, NCHW and channels-last: the GPU path folds the first
// convolution's bias into the ResBlock's time shift (its gradient arrives through the shift), and
// channels-last attention runs positions-major with a bf16-capable softmax.
TEST(Cuda, GradientsMatchTheCpuInBothMemoryFormats) {
  SKIP_WITHOUT_CUDA();
  auto net = diffuse::testing::random_unet("tiny", 1, 16, 11);
  net->train();
  const auto x = torch::randn({4, 1, 16, 16});
  const auto t = torch::randint(0, 1000, {4}, torch::kLong);
  const auto [loss, grads] = diffuse::testing::loss_and_flat_gradients(net, x, t);
  net->to(torch::kCUDA);
  // full float32 convolutions, so that a wrong gradient cannot hide in TF32's rounding
  const bool tf32 = at::globalContext().allowTF32CuDNN();
  at::globalContext().setAllowTF32CuDNN(false);
  for (auto format : {MemoryFormat::nchw, MemoryFormat::channels_last}) {
    SCOPED_TRACE(format == MemoryFormat::nchw ? "nchw" : "channels-last");
    net->set_memory_format(format);
    const auto [cuda_loss, cuda_grads] = diffuse::testing::loss_and_flat_gradients(net, x.cuda(), t.cuda());
    EXPECT_NEAR(cuda_loss, loss, 1e-4 * std::abs(loss));
    EXPECT_LT(relative_error(cuda_grads, grads), 1e-3);
  }
  at::globalContext().setAllowTF32CuDNN(tf32);
}

TEST(Cuda, TrainingStepsLowerTheLoss) {
  SKIP_WITHOUT_CUDA();
  for (auto precision : {Precision::fp32, Precision::bf16}) {
    const auto [first, last] = diffuse::testing::fit_fixed_batch(torch::kCUDA, precision);
    EXPECT_LT(last, 0.8 * first) << to_string(precision);
  }
}

TEST(Cuda, GraphReplayOfTheSamplingLoopEqualsTheEagerLoop) {
  SKIP_WITHOUT_CUDA();
  auto net = diffuse::testing::random_unet("tiny", 1, 16, 7);
  net->to(torch::kCUDA);
  GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCUDA);
  DdimSampler sampler(diffusion.schedule(), TimestepSpacing::leading, 0.0);
  torch::NoGradGuard no_grad;
  Denoiser denoiser = [&](const torch::Tensor& x, const torch::Tensor& t) { return net->forward(x, t); };
  auto loop = [&](const torch::Tensor& x_T) -> torch::Tensor {
    return sample_loop(diffusion, sampler, denoiser, x_T, SampleOptions{10, true}, c10::nullopt, StepCallback());
  };
  CudaGraphRunner graph(loop);
  for (int round = 0; round < 2; ++round) {  // the second round replays with new noise
    auto x_T = torch::randn({4, 1, 16, 16}, torch::kCUDA);
    auto eager = loop(x_T);
    auto replayed = graph(x_T);
    EXPECT_LT((eager - replayed).abs().max().item<double>(), 1e-4) << "round " << round;
  }
  EXPECT_GT(peak_memory_bytes(torch::kCUDA), 0);
}

// A network that fails while its graph is captured (out of memory, say): the error reaches the
// caller, the stream works again afterwards, and the next call captures afresh.
TEST(Cuda, AFailedCaptureLeavesTheDeviceUsable) {
  SKIP_WITHOUT_CUDA();
  int calls = 0;
  CudaGraphRunner graph([&](const torch::Tensor& x) {
    auto y = x * 2;
    if (++calls == 2) throw std::runtime_error("failed inside the capture");  // call 1: the warm-up
    return y;
  });
  const auto x = torch::ones({4}, torch::kCUDA);
  EXPECT_THROW(graph(x), std::runtime_error);
  EXPECT_TRUE(torch::equal((x + 1).cpu(), torch::full({4}, 2.0)));
  EXPECT_TRUE(torch::equal(graph(x).cpu(), torch::full({4}, 2.0)));
  EXPECT_EQ(calls, 4);
}

// Training on a GPU gathers its batches there (the images copied once): the same batches, in the
// same order, as the CPU's loader with the same seed, across an epoch's end and after a restore.
TEST(Cuda, BatchesGatheredOnTheGpuEqualTheCpusBatches) {
  SKIP_WITHOUT_CUDA();
  Dataset d;
  d.name = "counting";
  d.images = torch::randint(0, 256, {11, 1, 4, 4}, torch::kLong).to(torch::kUInt8);
  d.labels = torch::arange(11, torch::kLong);
  auto batches = [&](torch::Device device) {
    torch::manual_seed(3);
    BatchLoader loader(d, 4, device);
    std::vector<BatchLoader::Batch> out;
    for (int i = 0; i < 4; ++i) out.push_back(loader.next());  // 2 batches an epoch: a new order at the 3rd
    BatchLoader resumed(d, 4, device);
    resumed.restore(loader.order(), loader.cursor() - 4);
    out.push_back(resumed.next());  // the 4th batch again
    return out;
  };
  const auto cpu = batches(torch::kCPU), gpu = batches(torch::kCUDA);
  for (size_t i = 0; i < cpu.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(gpu[i].x0.is_cuda());
    EXPECT_TRUE(torch::equal(gpu[i].x0.cpu(), cpu[i].x0));
    EXPECT_TRUE(torch::equal(gpu[i].labels.cpu(), cpu[i].labels));
  }
  EXPECT_TRUE(torch::equal(cpu[4].labels, cpu[3].labels));
}

// AdamW on GPU parameters: LibTorch 2.x's fused kernel (one pass) against the multi-tensor route
// (DIFFUSE_FUSED_ADAMW=0), over three steps with weight decay; and both against the CPU's one-pass
// loop. On LibTorch 1.13 both GPU runs take the multi-tensor route.
TEST(Cuda, FusedAdamWMatchesTheMultiTensorAndTheCpuUpdates) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(2);
  const std::vector<torch::Tensor> start{torch::randn({64, 32}), torch::randn({7}), torch::randn({3, 3, 3, 3})};
  std::vector<std::vector<torch::Tensor>> grads(3);
  for (auto& step : grads)
    for (const auto& p : start) step.push_back(torch::randn_like(p));
  auto run = [&](torch::Device device, bool fused) {
    EnvironmentSwitch multi_tensor("DIFFUSE_FUSED_ADAMW", "0", /*on=*/!fused);
    std::vector<torch::Tensor> params;
    for (const auto& p : start) params.push_back(p.clone().to(device));  // the CPU run must not move `start`
    AdamW opt(params, AdamWOptions{0.9, 0.999, 1e-8, 0.05});
    for (const auto& step : grads) {
      for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = step[i].to(device);
      opt.step(1e-2);
    }
    std::vector<torch::Tensor> out;
    for (const auto& p : params) out.push_back(p.flatten().cpu());
    return torch::cat(out);
  };
  const auto cpu = run(torch::kCPU, true), fused = run(torch::kCUDA, true), foreach = run(torch::kCUDA, false);
  EXPECT_LT((fused - foreach).abs().max().item<double>(), 1e-5);
  EXPECT_LT((fused - cpu).abs().max().item<double>(), 1e-5);
  EXPECT_GT((cpu - torch::cat({start[0].flatten(), start[1], start[2].flatten()})).abs().max().item<double>(), 1e-3);
}

// Random numbers drawn on the CPU (so that a seed draws the same numbers on any device) reach the GPU
// through pinned memory without a host wait: the same values, even when the pinned block is
// reused right away by the next copy.
TEST(Cuda, AsynchronousCopiesOfCpuRandomNumbersArriveIntact) {
  SKIP_WITHOUT_CUDA();
  torch::manual_seed(9);
  std::vector<torch::Tensor> cpu, gpu;
  for (int i = 0; i < 8; ++i) {
    cpu.push_back(torch::randn({1000 + i}));
    gpu.push_back(to_device_async(cpu.back(), torch::kCUDA));
  }
  for (size_t i = 0; i < cpu.size(); ++i) EXPECT_TRUE(torch::equal(gpu[i].cpu(), cpu[i])) << i;
  GaussianDiffusion on_cpu(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCPU),
      on_gpu(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCUDA);
  torch::manual_seed(4);
  const auto t_cpu = on_cpu.sample_timesteps(64);
  torch::manual_seed(4);
  EXPECT_TRUE(torch::equal(on_gpu.sample_timesteps(64).cpu(), t_cpu));
}

// What `diffuse sample`, `edit` and `eval` run on a GPU: each network call replayed from a CUDA
// graph, the sampler eager. A class-conditional network under guidance (the doubled batch inside
// the graph), DDPM's noise drawn outside it, and a last smaller batch that needs a new capture:
// the images must equal the eager run's.
TEST(Cuda, NetworkCallsReplayedFromAGraphSampleWhatTheEagerNetworkSamples) {
  SKIP_WITHOUT_CUDA();
  auto config = unet_config_by_name("tiny", 1, 16);
  config.num_classes = 3;
  torch::manual_seed(5);
  UNet net(config);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : net->parameters()) p.normal_(0.0, 0.05);
  }
  net->eval();
  net->to(torch::kCUDA);
  GaussianDiffusion diffusion(NoiseSchedule(ScheduleConfig{}), Objective::eps, torch::kCUDA);
  c10::InferenceMode inference;
  ConditionalDenoiser model = [&](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    AutocastScope autocast(torch::kCUDA, Precision::bf16);
    return net->forward(x, t, y);
  };
  const auto guided = classifier_free_guidance(model, /*null_label=*/3, /*w=*/1.5);
  const auto replayed = replay_as_cuda_graph(guided);
  const auto labels = torch::arange(7, torch::kLong).remainder(3);
  DdpmSampler ddpm(diffusion.schedule(), TimestepSpacing::leading, /*large_variance=*/false);
  DdimSampler ddim(diffusion.schedule(), TimestepSpacing::leading, 0.0);
  for (Sampler* sampler : std::vector<Sampler*>{&ddpm, &ddim}) {
    // 7 images in batches of 4: the second batch (3 images) is captured anew
    auto images = [&](const ConditionalDenoiser& f) {
      auto gen = at::detail::createCPUGenerator(11);
      return generate_images(diffusion, *sampler, f, labels, 7, 4, {1, 16, 16}, SampleOptions{10, true}, gen);
    };
    const auto eager = images(guided), graphed = images(replayed);
    EXPECT_LT((eager - graphed).abs().max().item<double>(), 1e-4);
  }
  // the unconditional form: y stays undefined inside the graph
  const auto plain = replay_as_cuda_graph(Denoiser([&](const torch::Tensor& x, const torch::Tensor& t) {
    return net->forward(x, t);
  }));
  const auto x = torch::randn({2, 1, 16, 16}, torch::kCUDA);
  const auto t = torch::full({2}, 400, torch::dtype(torch::kLong).device(torch::kCUDA));
  for (int call = 0; call < 2; ++call) {
    EXPECT_LT((plain(x * (call + 1), t) - net->forward(x * (call + 1), t)).abs().max().item<double>(), 1e-5);
  }
}

// The hand-written GroupNorm kernel (runtime/group_norm_cuda.h) against float64 on the CPU:
// with and without the shift and the SiLU, float32 and bf16, channel counts of the U-Nets
// (128 to 512, and 384 from concatenated skips), 1 to 1024 pixels, and a mean far from zero.
TEST(Cuda, GroupNormKernelMatchesAFloat64Reference) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_group_norm_built()) GTEST_SKIP() << "built without the own CUDA kernels (no nvcc)";
  torch::NoGradGuard no_grad;
  struct Case {
    int64_t n, c, h, w, groups;
    bool shift, silu;
    torch::ScalarType dtype;
    double offset;
  };
  for (const auto& k : {Case{3, 128, 32, 32, 32, true, true, torch::kFloat32, 0.0},
                        Case{2, 384, 8, 8, 32, true, true, torch::kFloat32, 30.0},
                        Case{2, 512, 4, 4, 32, false, false, torch::kFloat32, 0.0},
                        Case{4, 256, 1, 1, 32, true, true, torch::kFloat32, 0.0},
                        Case{2, 16, 5, 7, 4, false, true, torch::kFloat32, 0.0},
                        Case{3, 256, 16, 16, 32, true, true, torch::kBFloat16, 2.0},
                        Case{2, 128, 32, 32, 32, false, false, torch::kBFloat16, 0.0}}) {
    SCOPED_TRACE("c " + std::to_string(k.c) + ", " + std::to_string(k.h) + "x" + std::to_string(k.w) +
                 (k.shift ? ", shift" : "") + (k.silu ? ", silu" : "") + (k.dtype == torch::kBFloat16 ? ", bf16" : ""));
    auto x = (torch::randn({k.n, k.c, k.h, k.w}) * 0.7 + k.offset).to(k.dtype);
    auto shift = k.shift ? torch::randn({k.n, k.c}) : torch::Tensor();
    auto gamma = 1 + 0.3 * torch::randn({k.c}), beta = 0.3 * torch::randn({k.c});
    // float64 reference on the CPU, from the same (rounded) input
    auto u = x.to(torch::kFloat64);
    if (k.shift) u = u + shift.to(torch::kFloat64).unsqueeze(-1).unsqueeze(-1);
    auto expected = torch::group_norm(u, k.groups, gamma.to(torch::kFloat64), beta.to(torch::kFloat64), 1e-5);
    if (k.silu) expected = torch::silu(expected);
    auto xc = x.cuda().contiguous(c10::MemoryFormat::ChannelsLast);
    auto sc = k.shift ? shift.cuda() : torch::Tensor();
    ASSERT_TRUE(cuda_group_norm_applies(xc, gamma.cuda(), beta.cuda(), sc, k.groups));
    auto y = group_norm_cuda(xc, sc, gamma.cuda(), beta.cuda(), k.groups, 1e-5, k.silu);
    EXPECT_EQ(y.scalar_type(), k.dtype);
    EXPECT_TRUE(y.is_contiguous(c10::MemoryFormat::ChannelsLast));
    const double err = relative_error(y.cpu().to(torch::kFloat64), expected);
    EXPECT_LT(err, k.dtype == torch::kBFloat16 ? 1e-2 : 1e-5);
  }
  // where it does not apply: NCHW, a gradient wanted, channels not a multiple of 8
  auto x = torch::randn({2, 64, 8, 8}, torch::kCUDA);
  auto g = torch::ones({64}, torch::kCUDA), b = torch::zeros({64}, torch::kCUDA);
  EXPECT_FALSE(cuda_group_norm_applies(x, g, b, {}, 8));
  auto xl = x.contiguous(c10::MemoryFormat::ChannelsLast);
  EXPECT_TRUE(cuda_group_norm_applies(xl, g, b, {}, 8));
  {
    torch::AutoGradMode grad(true);
    EXPECT_FALSE(cuda_group_norm_applies(xl, g.clone().requires_grad_(true), b, {}, 8));
  }
  auto odd = torch::randn({2, 12, 8, 8}, torch::kCUDA).contiguous(c10::MemoryFormat::ChannelsLast);
  EXPECT_FALSE(cuda_group_norm_applies(odd, torch::ones({12}, torch::kCUDA), torch::zeros({12}, torch::kCUDA), {}, 4));
  EXPECT_THROW(group_norm_cuda(x, {}, g, b, 8, 1e-5, true), std::invalid_argument);
}

// The convolution bias epilogue (runtime/conv_epilogue_cuda.h) against float64 on the CPU: 3×3
// and 1×1, stride 1 and 2, with and without the residual, float32 and bf16, channel counts of the
// U-Nets (the qkv projection's 384 too) and an odd image size.
TEST(Cuda, ConvEpilogueMatchesAFloat64Reference) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_group_norm_built()) GTEST_SKIP() << "built without the own CUDA kernels (no nvcc)";
  torch::NoGradGuard no_grad;
  struct Case {
    int64_t c_in, c_out, k, stride, size;
    bool residual;
    torch::ScalarType dtype;
  };
  const auto channels_last = c10::MemoryFormat::ChannelsLast;
  for (const auto& k : {Case{64, 128, 3, 1, 16, true, torch::kFloat32}, Case{128, 384, 1, 1, 8, false, torch::kBFloat16},
                        Case{32, 64, 3, 2, 16, false, torch::kFloat32}, Case{256, 256, 3, 1, 4, true, torch::kBFloat16},
                        Case{16, 16, 3, 1, 5, true, torch::kBFloat16}}) {
    SCOPED_TRACE(std::to_string(k.c_in) + "→" + std::to_string(k.c_out) + ", " + std::to_string(k.k) + "×" +
                 std::to_string(k.k) + " stride " + std::to_string(k.stride) + (k.residual ? ", residual" : "") +
                 (k.dtype == torch::kBFloat16 ? ", bf16" : ""));
    const int64_t padding = k.k / 2, out = (k.size + 2 * padding - k.k) / k.stride + 1;
    const auto x = torch::randn({3, k.c_in, k.size, k.size}).to(k.dtype);
    const auto w = (torch::randn({k.c_out, k.c_in, k.k, k.k}) / std::sqrt(double(k.c_in * k.k * k.k))).to(k.dtype);
    const auto b = torch::randn({k.c_out});  // float32, as a module's bias under autocast
    const auto r = k.residual ? torch::randn({3, k.c_out, out, out}).to(k.dtype) : torch::Tensor();
    auto expected = torch::conv2d(x.to(torch::kFloat64), w.to(torch::kFloat64), b.to(torch::kFloat64), k.stride, padding);
    if (k.residual) expected = expected + r.to(torch::kFloat64);
    const auto xc = x.cuda().contiguous(channels_last), wc = w.cuda(), bc = b.cuda();
    const auto rc = k.residual ? r.cuda().contiguous(channels_last) : torch::Tensor();
    ASSERT_TRUE(cuda_conv_epilogue_applies(xc, wc, bc));
    const auto y = conv2d_bias_residual_cuda(xc, wc, bc, k.stride, padding, rc);
    EXPECT_EQ(y.scalar_type(), k.dtype);
    EXPECT_TRUE(y.is_contiguous(channels_last));
    // float32: cuDNN may convolve in TF32 (10-bit mantissa)
    EXPECT_LT(relative_error(y.to(torch::kFloat64), expected), k.dtype == torch::kBFloat16 ? 1e-2 : 5e-3);
  }
  auto x = torch::randn({2, 32, 8, 8}, torch::kCUDA).contiguous(channels_last);
  auto w = torch::randn({64, 32, 3, 3}, torch::kCUDA) * 0.05, b = torch::randn({64}, torch::kCUDA);
  // a residual in another dtype is LibTorch's add, with its type promotion, as without the kernel
  const auto r64 = torch::randn({2, 64, 8, 8}, torch::kCUDA).to(torch::kFloat64);
  const auto promoted = conv2d_bias_residual_cuda(x, w, b, 1, 1, r64);
  EXPECT_EQ(promoted.scalar_type(), torch::kFloat64);
  EXPECT_LT(relative_error(promoted, torch::conv2d(x, w, b, 1, 1) + r64), 5e-3);
  // where it does not apply: NCHW, no bias, channels not a multiple of 8, a gradient wanted
  EXPECT_FALSE(cuda_conv_epilogue_applies(x.contiguous(), w, b));
  EXPECT_FALSE(cuda_conv_epilogue_applies(x, w, {}));
  EXPECT_FALSE(cuda_conv_epilogue_applies(x, w.narrow(0, 0, 12), b.narrow(0, 0, 12)));
  {
    torch::AutoGradMode grad(true);
    EXPECT_FALSE(cuda_conv_epilogue_applies(x, w.clone().requires_grad_(true), b));
  }
  EXPECT_THROW(conv2d_bias_residual_cuda(x.contiguous(), w, b, 1, 1), std::invalid_argument);
}

// Attention over positions-major views of a channels-last qkv output (the GPU's route) against
// float64: out_i = Σ_j softmax_j(q_i · k_j / √C) v_j, in every kernel this build has.
TEST(Cuda, AttentionOverPositionsMajorViewsMatchesAFloat64Reference) {
  SKIP_WITHOUT_CUDA();
  torch::NoGradGuard no_grad;
  const int64_t B = 2, N = 40, C = 32;
  const auto qkv = torch::randn({B, N, 3 * C});
  const auto q = qkv.narrow(2, 0, C), k = qkv.narrow(2, C, C), v = qkv.narrow(2, 2 * C, C);  // strided views
  const auto d = [](const torch::Tensor& t) { return t.to(torch::kFloat64); };
  const auto expected = torch::matmul(torch::softmax(torch::matmul(d(q), d(k).transpose(1, 2)) / std::sqrt(double(C)), -1), d(v));
  std::vector<AttentionKernel> kernels{AttentionKernel::math};
  if (fused_attention_built()) kernels.push_back(AttentionKernel::fused);
  const auto before = attention_kernel();
  for (auto kernel : kernels) {
    set_attention_kernel(kernel);
    for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      SCOPED_TRACE(to_string(kernel) + (dtype == torch::kBFloat16 ? ", bf16" : ", float32"));
      const auto t = qkv.to(dtype).cuda();
      const auto out = dot_product_attention_tokens(t.narrow(2, 0, C), t.narrow(2, C, C), t.narrow(2, 2 * C, C));
      ASSERT_EQ(out.sizes(), (std::vector<int64_t>{B, N, C}));
      EXPECT_TRUE(out.is_contiguous());
      // float32 products may run in TF32 on the GPU
      EXPECT_LT(relative_error(out.to(torch::kFloat64), expected), dtype == torch::kBFloat16 ? 2e-2 : 5e-3);
    }
  }
  set_attention_kernel(before);
}

// The upsampling kernel (runtime/upsample_cuda.h) against LibTorch's nearest-neighbour
// interpolation on the CPU: exact copies, so equal, in float32 and bf16, odd sizes included.
TEST(Cuda, UpsamplingTwiceEqualsLibTorchsNearestNeighbour) {
  SKIP_WITHOUT_CUDA();
  if (!cuda_group_norm_built()) GTEST_SKIP() << "built without the own CUDA kernels (no nvcc)";
  torch::NoGradGuard no_grad;
  const auto channels_last = c10::MemoryFormat::ChannelsLast;
  struct Case {
    int64_t n, c, h, w;
    torch::ScalarType dtype;
  };
  for (const auto& k : {Case{2, 4, 7, 7, torch::kFloat32}, Case{3, 256, 16, 16, torch::kBFloat16},
                        Case{2, 8, 5, 3, torch::kBFloat16}, Case{1, 128, 8, 8, torch::kFloat32}}) {
    SCOPED_TRACE(std::to_string(k.c) + " channels, " + std::to_string(k.h) + "x" + std::to_string(k.w));
    const auto x = torch::randn({k.n, k.c, k.h, k.w}).to(k.dtype);
    namespace F = torch::nn::functional;
    const auto expected = F::interpolate(
        x.to(torch::kFloat32),
        F::InterpolateFuncOptions().size(std::vector<int64_t>{2 * k.h, 2 * k.w}).mode(torch::kNearest));
    const auto xc = x.cuda().contiguous(channels_last);
    ASSERT_TRUE(cuda_upsample_twice_applies(xc));
    const auto y = upsample_twice_cuda(xc);
    EXPECT_EQ(y.scalar_type(), k.dtype);
    EXPECT_TRUE(y.is_contiguous(channels_last));
    EXPECT_TRUE(torch::equal(y.cpu().to(torch::kFloat32), expected));
  }
  // where it does not apply: NCHW, pixels not a multiple of 16 bytes, a gradient wanted
  const auto x = torch::randn({2, 8, 4, 4}, torch::kCUDA);
  EXPECT_FALSE(cuda_upsample_twice_applies(x));
  EXPECT_FALSE(cuda_upsample_twice_applies(torch::randn({2, 2, 4, 4}, torch::kCUDA).contiguous(channels_last)));
  {
    torch::AutoGradMode grad(true);
    EXPECT_FALSE(cuda_upsample_twice_applies(x.contiguous(channels_last).requires_grad_(true)));
  }
  EXPECT_THROW(upsample_twice_cuda(x), std::invalid_argument);
}
