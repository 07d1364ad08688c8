// The network's calls during sampling and editing replayed from a CUDA graph: on a GPU, one
// launch of the whole captured forward pass per step instead of hundreds of kernel launches from
// the host, while the sampler's own arithmetic (and any randomness it draws) stays outside the
// graph, so that every sampler, guidance and editing method can use it.
#pragma once

#include "diffuse/sampling/sample_loop.h"

namespace diffuse {

// The same network, its calls on GPU inputs replayed from a CUDA graph (runtime/device.h's
// CudaGraphRunner): captured on the first call, and again when the inputs' shapes change (a last,
// smaller batch; guidance doubling the batch happens inside and is captured with it). The
// network must be deterministic and free of host syncs (eval mode: no dropout). Calls on CPU
// inputs, or in a build without CUDA, go to the network as they are.
ConditionalDenoiser replay_as_cuda_graph(ConditionalDenoiser net);
Denoiser replay_as_cuda_graph(Denoiser net);

}  // namespace diffuse
