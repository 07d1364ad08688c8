#include "diffuse/runtime/cuda_graph_network.h"

#include <memory>

#include "diffuse/runtime/device.h"

namespace diffuse {

NetworkCall3 replay_as_cuda_graph(NetworkCall3 net) {
  // made on the first GPU call (constructing a runner throws without CUDA), shared by the copies
  // of the returned function
  auto graph = std::make_shared<std::unique_ptr<CudaGraphRunner>>();
  return [net = std::move(net), graph](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor& y) {
    if (!x.is_cuda() || !cuda_graphs_available()) return net(x, t, y);
    if (!*graph) {
      *graph = std::make_unique<CudaGraphRunner>(
          [net](const std::vector<torch::Tensor>& in) { return net(in[0], in[1], in[2]); });
    }
    return (**graph)({x, t, y});
  };
}

NetworkCall2 replay_as_cuda_graph(NetworkCall2 net) {
  auto conditional = replay_as_cuda_graph(
      NetworkCall3([net = std::move(net)](const torch::Tensor& x, const torch::Tensor& t, const torch::Tensor&) {
        return net(x, t);
      }));
  return [conditional](const torch::Tensor& x, const torch::Tensor& t) { return conditional(x, t, torch::Tensor()); };
}

}  // namespace diffuse
