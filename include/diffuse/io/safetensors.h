// safetensors (https://github.com/huggingface/safetensors) reading and writing:
//   [u64 little-endian header length N][N bytes JSON header][raw little-endian tensor data]
// The header maps each name to {"dtype", "shape", "data_offsets": [begin, end]} and may hold
// "__metadata__", a map of strings to strings.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace diffuse {

struct SafetensorsContent {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // CPU tensors, file order
  std::map<std::string, std::string> metadata;

  // The tensor called `name`; throws naming it (and `source`) when it is absent.
  const torch::Tensor& at(const std::string& name) const;
  // The tensor called `name`, or null when it is absent (a part a file may or may not have).
  const torch::Tensor* find(const std::string& name) const;
  std::string source;  // the file it came from, for error messages
};

// Serialises tensors (moved to CPU, made contiguous) with metadata.
std::string safetensors_serialize(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata);
// Parses and validates: header length, JSON, dtypes, shapes against byte ranges, ranges inside
// the data. Errors name `source` and the offending entry.
SafetensorsContent safetensors_parse(const std::string& bytes, const std::string& source);

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata);  // atomic
SafetensorsContent load_safetensors(const std::string& path);
// Only the "__metadata__", reading only the header (a training state is hundreds of megabytes, its
// description a few kilobytes); the header is checked as load_safetensors checks it.
std::map<std::string, std::string> load_safetensors_metadata(const std::string& path);

}  // namespace diffuse
