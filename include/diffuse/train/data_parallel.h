// Data-parallel training over PyTorch's own collective engine (c10d): every process (rank) holds
// the whole model, reads its own shard of the data, and after backward the gradients are averaged
// over all ranks (all-reduce), so each rank takes the same optimizer step — the step a single
// process would take on the combined batch (the loss being a mean over equal shards).
//
// Rendezvous as torchrun and cluster launchers set it up: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT; rank 0 hosts the TCPStore. ProcessGroupGloo on the CPU,
// ProcessGroupNCCL on CUDA.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

namespace diffuse {

struct DistributedEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool enabled() const { return world_size > 1; }
};

// Reads the torchrun variables; WORLD_SIZE unset or 1 means a single process. Throws naming the
// variable when one is malformed or RANK is out of range.
DistributedEnv distributed_env_from_environment();

// Whether this build has ProcessGroupGloo (CPU collectives): it needs Gloo's headers, which
// Debian ships and PyTorch's wheels do not.
bool gloo_built();
// Whether this build has ProcessGroupNCCL (GPU collectives): a CUDA LibTorch built with NCCL.
bool nccl_built();

class DataParallel {
 public:
  DataParallel(const DistributedEnv& env, torch::Device device);  // blocks until every rank has joined
  ~DataParallel();

  const DistributedEnv& env() const { return env_; }
  // g ← (1/W) Σ_ranks g, for every parameter with a gradient (one flattened all-reduce).
  void average_gradients(const std::vector<torch::Tensor>& params);
  // The mean of `value` over all ranks (an all-reduce of one number): a NaN or infinity on any
  // rank makes it non-finite on every rank, so that all of them stop together.
  double mean_over_ranks(double value);
  // Every rank takes rank 0's values (parameters at the start, so all ranks begin equal).
  void broadcast_from_rank0(const std::vector<torch::Tensor>& tensors);
  void barrier();

 private:
  struct Impl;
  DistributedEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse
