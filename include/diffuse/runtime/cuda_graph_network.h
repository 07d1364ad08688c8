// The network's calls during sampling and editing replayed from a CUDA graph: on a GPU, one
// launch of the whole captured forward pass per step instead of hundreds of kernel launches from
// the host, while the sampler's own arithmetic (and any randomness it draws) stays outside the
// graph, so that every sampler, guidance and editing method can use it.
#pragma once

#include <torch/torch.h>

#include <functional>

namespace diffuse {

// The same network, its calls on GPU inputs replayed from a CUDA graph (runtime/device.h's
// CudaGraphRunner): captured on the first call, and again when the inputs' shapes change (a last,
// smaller batch; guidance doubling the batch happens inside and is captured with it). The
// network must be deterministic and free of host syncs (eval mode: no dropout). Calls on CPU
// inputs, or in a build without CUDA, go to the network as they are.
// The network as a function of (x, t, y) or of (x, t): the same types as sampling's
// ConditionalDenoiser and Denoiser (sampling/sample_loop.h), named here without that layer.
using NetworkCall3 = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)>;
using NetworkCall2 = std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>;
NetworkCall3 replay_as_cuda_graph(NetworkCall3 net);
NetworkCall2 replay_as_cuda_graph(NetworkCall2 net);

}  // namespace diffuse
