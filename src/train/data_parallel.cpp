#include "diffuse/train/data_parallel.h"

// ProcessGroupGloo.hpp needs Gloo's own headers (Debian's libgloo-dev has them; PyTorch 2.11's
// wheel does not ship them), and is only declared with USE_C10D_GLOO (TorchConfig sets it for
// CUDA builds of LibTorch; Debian's does not, though its libtorch_cpu carries Gloo).
#if __has_include(<gloo/algorithm.h>)
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#define DIFFUSE_HAVE_GLOO 1
#else
#define DIFFUSE_HAVE_GLOO 0
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "diffuse_build_config.h"
#if DIFFUSE_HAVE_CUDA && defined(USE_C10D_NCCL)
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define DIFFUSE_HAVE_NCCL 1
#else
#define DIFFUSE_HAVE_NCCL 0
#endif

#include <cstdlib>
#include <stdexcept>

namespace diffuse {

namespace {

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  try {
    size_t used = 0;
    const int x = std::stoi(v, &used);
    if (used != std::string(v).size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw std::runtime_error(std::string("environment variable ") + name + "='" + v + "' is not an integer");
  }
}

}  // namespace

DistributedEnv distributed_env_from_environment() {
  DistributedEnv e;
  e.world_size = env_int("WORLD_SIZE", 1);
  e.rank = env_int("RANK", 0);
  e.local_rank = env_int("LOCAL_RANK", e.rank);
  e.master_port = env_int("MASTER_PORT", 29500);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  if (e.world_size < 1) throw std::runtime_error("WORLD_SIZE must be at least 1");
  if (e.rank < 0 || e.rank >= e.world_size) {
    throw std::runtime_error("RANK=" + std::to_string(e.rank) + " is outside [0, WORLD_SIZE=" + std::to_string(e.world_size) + ")");
  }
  if (e.master_port < 1 || e.master_port > 65535) throw std::runtime_error("MASTER_PORT must be in 1..65535");
  return e;
}

bool gloo_built() { return DIFFUSE_HAVE_GLOO; }
bool nccl_built() { return DIFFUSE_HAVE_NCCL; }

struct DataParallel::Impl {
  torch::Device device = torch::kCPU;
  c10::intrusive_ptr<c10d::TCPStore> store;
#if DIFFUSE_HAVE_GLOO
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
#endif
#if DIFFUSE_HAVE_NCCL
  c10::intrusive_ptr<c10d::ProcessGroupNCCL> nccl;
#endif

  void all_reduce(std::vector<torch::Tensor>& tensors) {
#if DIFFUSE_HAVE_NCCL
    if (nccl) return void(nccl->allreduce(tensors)->wait());
#endif
#if DIFFUSE_HAVE_GLOO
    gloo->allreduce(tensors)->wait();
#endif
  }
  void broadcast(std::vector<torch::Tensor>& tensors) {
#if DIFFUSE_HAVE_NCCL
    if (nccl) return void(nccl->broadcast(tensors)->wait());
#endif
#if DIFFUSE_HAVE_GLOO
    gloo->broadcast(tensors)->wait();
#endif
  }
};

DataParallel::DataParallel(const DistributedEnv& env, torch::Device device) : env_(env), impl_(new Impl) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(env.master_port);
  options.isServer = env.rank == 0;
  options.numWorkers = env.world_size;
  impl_->device = device;
  impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
  if (device.is_cuda()) {
#if DIFFUSE_HAVE_NCCL
    impl_->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size);
    return;
#else
    throw std::runtime_error("data-parallel training on CUDA needs a LibTorch built with NCCL");
#endif
  }
#if DIFFUSE_HAVE_GLOO
  auto gloo_options = c10d::ProcessGroupGloo::Options::create();
  gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
  impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, gloo_options);
#else
  throw std::runtime_error("data-parallel training on the CPU needs Gloo's headers at build time (gloo/algorithm.h)");
#endif
}

DataParallel::~DataParallel() = default;

void DataParallel::average_gradients(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return;
  // One buffer for all gradients: one collective instead of one per parameter.
  std::vector<torch::Tensor> flat{torch::cat([&] {
    std::vector<torch::Tensor> views;
    for (auto& g : grads) views.push_back(g.reshape({-1}));
    return views;
  }())};
  impl_->all_reduce(flat);
  flat[0].div_(static_cast<double>(env_.world_size));
  int64_t offset = 0;
  for (auto& g : grads) {
    g.copy_(flat[0].narrow(0, offset, g.numel()).view_as(g));
    offset += g.numel();
  }
}

double DataParallel::mean_over_ranks(double value) {
  std::vector<torch::Tensor> one{torch::full({1}, value, torch::dtype(torch::kFloat64).device(impl_->device))};
  impl_->all_reduce(one);
  return one[0].item<double>() / static_cast<double>(env_.world_size);
}

void DataParallel::broadcast_from_rank0(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    std::vector<torch::Tensor> one{t.is_contiguous() ? t : t.contiguous()};
    impl_->broadcast(one);
    if (!t.is_contiguous()) t.copy_(one[0]);
  }
}

void DataParallel::barrier() {
  std::vector<torch::Tensor> token{torch::zeros({1}, torch::TensorOptions().device(impl_->device))};
  impl_->all_reduce(token);
}

}  // namespace diffuse
