#include "diffuse/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstring>
#include <stdexcept>

#include "diffuse/io/atomic_file.h"

namespace diffuse {

namespace {

struct DtypeName {
  torch::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {torch::kFloat32, "F32"}, {torch::kFloat64, "F64"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"},
    {torch::kInt64, "I64"},   {torch::kInt32, "I32"},   {torch::kUInt8, "U8"},    {torch::kInt8, "I8"},
    {torch::kBool, "BOOL"},
};

const char* dtype_name(torch::ScalarType t) {
  for (const auto& d : kDtypes)
    if (d.type == t) return d.name;
  throw std::runtime_error(std::string("safetensors: unsupported dtype ") + c10::toString(t));
}

torch::ScalarType dtype_from_name(const std::string& n, const std::string& where) {
  for (const auto& d : kDtypes)
    if (n == d.name) return d.type;
  throw std::runtime_error(where + ": unsupported dtype '" + n + "'");
}

}  // namespace

const torch::Tensor& SafetensorsContent::at(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return t;
  throw std::runtime_error("'" + source + "' has no tensor named '" + name + "'");
}

std::string safetensors_serialize(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    auto t = tensor.detach().to(torch::kCPU).contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype_name(t.scalar_type())}, {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    contiguous.push_back(t);
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // pad so the data starts 8-byte aligned
  std::string out;
  out.reserve(8 + json.size() + offset);
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  for (const auto& t : contiguous) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

SafetensorsContent safetensors_parse(const std::string& bytes, const std::string& source) {
  SafetensorsContent content;
  content.source = source;
  if (bytes.size() < 8) throw std::runtime_error("'" + source + "' is not a safetensors file: shorter than 8 bytes");
  uint64_t header_len = 0;
  for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (header_len > bytes.size() - 8) {
    throw std::runtime_error("'" + source + "' is truncated or not a safetensors file: header length " +
                             std::to_string(header_len) + " exceeds the file size " + std::to_string(bytes.size()));
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.substr(8, header_len));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error("'" + source + "': corrupt safetensors header: " + e.what());
  }
  if (!header.is_object()) throw std::runtime_error("'" + source + "': safetensors header is not a JSON object");
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw std::runtime_error("'" + source + "': metadata '" + k + "' is not a string");
        content.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    const std::string where = "'" + source + "', tensor '" + name + "'";
    try {
      const auto dtype = dtype_from_name(entry.at("dtype").get<std::string>(), where);
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size) {
        throw std::runtime_error(where + ": data offsets outside the file (truncated?)");
      }
      int64_t numel = 1;
      for (int64_t s : shape) {
        if (s < 0) throw std::runtime_error(where + ": negative dimension");
        numel *= s;
      }
      const uint64_t expected = static_cast<uint64_t>(numel) * c10::elementSize(dtype);
      if (expected != offsets[1] - offsets[0]) {
        throw std::runtime_error(where + ": shape needs " + std::to_string(expected) + " bytes but the entry has " +
                                 std::to_string(offsets[1] - offsets[0]));
      }
      auto t = torch::empty(shape, torch::dtype(dtype));
      if (expected > 0) std::memcpy(t.data_ptr(), bytes.data() + data_start + offsets[0], expected);
      content.tensors.emplace_back(name, t);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(where + ": malformed entry: " + e.what());
    }
  }
  // nlohmann::json orders keys by name; keep that order explicit.
  std::sort(content.tensors.begin(), content.tensors.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return content;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, safetensors_serialize(tensors, metadata));
}

SafetensorsContent load_safetensors(const std::string& path) { return safetensors_parse(read_file(path), path); }

}  // namespace diffuse
