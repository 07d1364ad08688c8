// The flat loops of the one-pass AdamW, EMA and gradient-norm updates on float32 CPU tensors:
// whether tensors lie element for element in the same dense memory, so that one loop over
// data_ptr<float>() walks them all (NCHW or channels-last alike), and one parallel region over
// all of a model's tensors at once.
#pragma once

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

namespace diffuse {

inline bool flat_float_cpu(const torch::Tensor& p, std::initializer_list<torch::Tensor> partners) {
  if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat32 || !p.is_non_overlapping_and_dense()) return false;
  for (const auto& t : partners) {
    if (!t.device().is_cpu() || t.scalar_type() != torch::kFloat32 || t.strides() != p.strides()) return false;
  }
  return true;
}

// One element range of one tensor, the unit of work of parallel_over_chunks.
struct ElementChunk {
  size_t tensor;  // index into the caller's list
  int64_t begin, end;
};

// Cuts tensors of the given sizes into ranges of at most `chunk` elements.
inline std::vector<ElementChunk> element_chunks(const std::vector<int64_t>& numels, int64_t chunk = 1 << 14) {
  std::vector<ElementChunk> chunks;
  for (size_t i = 0; i < numels.size(); ++i) {
    for (int64_t b = 0; b < numels[i]; b += chunk) chunks.push_back({i, b, std::min(numels[i], b + chunk)});
  }
  return chunks;
}

// body(chunk_index, chunk) for every chunk, in one parallel region. A model's many small tensors
// (167 in `mnist`) would otherwise each open a region of their own, or run on one thread where
// they fall under the grain size.
template <class Body>
void parallel_over_chunks(const std::vector<ElementChunk>& chunks, Body&& body) {
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) body(static_cast<size_t>(c), chunks[c]);
  });
}

}  // namespace diffuse
