#include "diffuse/io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <tuple>

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

const torch::Tensor* SafetensorsContent::find(const std::string& name) const {
  for (const auto& [n, t] : tensors)
    if (n == name) return &t;
  return nullptr;
}

const torch::Tensor& SafetensorsContent::at(const std::string& name) const {
  if (const auto* t = find(name)) return *t;
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

namespace {

// The format's rules (github.com/huggingface/safetensors): an 8-byte little-endian header length
// N ≤ 100 MB; N bytes of UTF-8 JSON starting with '{', one entry per tensor, no name twice;
// entries' [begin, end) byte ranges are integers, each the size its dtype and shape imply, and
// together they tile the data buffer exactly: no gap, no overlap, nothing after the last one.

// N from the file's first 8 bytes, checked against the file's size and the format's limit.
uint64_t header_length(const std::string& first8, uint64_t file_size, const std::string& source) {
  if (first8.size() < 8) throw std::runtime_error("'" + source + "' is not a safetensors file: shorter than 8 bytes");
  constexpr uint64_t kMaxHeader = 100'000'000;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(first8[i])) << (8 * i);
  if (n > file_size - 8) {
    throw std::runtime_error("'" + source + "' is truncated or not a safetensors file: header length " +
                             std::to_string(n) + " exceeds the file size " + std::to_string(file_size));
  }
  if (n > kMaxHeader) {
    throw std::runtime_error("'" + source + "': header length " + std::to_string(n) + " exceeds the format's 100 MB");
  }
  return n;
}

// The header's JSON: an object starting with '{' that names no key twice.
nlohmann::json parse_header(const std::string& text, const std::string& source) {
  auto fail = [&](const std::string& why) { throw std::runtime_error("'" + source + "': " + why); };
  if (text.empty() || text[0] != '{') fail("the header does not start with '{' (not a safetensors file?)");
  nlohmann::json header;
  std::set<std::string> keys;
  std::string duplicate;
  // Top-level keys, seen as they are parsed: nlohmann keeps only the last of a repeated key.
  const nlohmann::json::parser_callback_t note_keys = [&](int depth, nlohmann::json::parse_event_t event,
                                                          nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key && !keys.insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    header = nlohmann::json::parse(text, note_keys);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("corrupt safetensors header: ") + e.what());
  }
  if (!header.is_object()) fail("safetensors header is not a JSON object");
  if (!duplicate.empty()) fail("the header names '" + duplicate + "' twice");
  return header;
}

// The header's "__metadata__": strings by name.
std::map<std::string, std::string> metadata_of(const nlohmann::json& header, const std::string& source) {
  std::map<std::string, std::string> metadata;
  if (!header.contains("__metadata__")) return metadata;
  const auto& entry = header.at("__metadata__");
  if (!entry.is_object()) throw std::runtime_error("'" + source + "': __metadata__ is not an object");
  for (const auto& [k, v] : entry.items()) {
    if (!v.is_string()) throw std::runtime_error("'" + source + "': metadata '" + k + "' is not a string");
    metadata[k] = v.get<std::string>();
  }
  return metadata;
}

}  // namespace

SafetensorsContent safetensors_parse(const std::string& bytes, const std::string& source) {
  SafetensorsContent content;
  content.source = source;
  auto fail = [&](const std::string& why) { throw std::runtime_error("'" + source + "': " + why); };
  const uint64_t header_len = header_length(bytes.substr(0, 8), bytes.size(), source);
  const nlohmann::json header = parse_header(bytes.substr(8, header_len), source);
  content.metadata = metadata_of(header, source);
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = bytes.size() - data_start;
  struct Range {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Range> ranges;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = "'" + source + "', tensor '" + name + "'";
    auto bad = [&](const std::string& why) { throw std::runtime_error(where + ": " + why); };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets")) {
      bad("malformed entry (needs dtype, shape and data_offsets)");
    }
    if (!entry.at("dtype").is_string()) bad("dtype is not a string");
    const auto dtype = dtype_from_name(entry.at("dtype").get<std::string>(), where);
    const auto& shape_json = entry.at("shape");
    const auto& offsets_json = entry.at("data_offsets");
    if (!shape_json.is_array()) bad("shape is not a list");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : shape_json) {
      if (!d.is_number_unsigned()) bad("shape " + shape_json.dump() + " holds something other than sizes >= 0");
      const uint64_t size = d.get<uint64_t>();
      if (size != 0 && numel > (uint64_t{1} << 62) / size) bad("shape " + shape_json.dump() + " overflows");
      numel *= size;
      shape.push_back(static_cast<int64_t>(size));
    }
    if (!offsets_json.is_array() || offsets_json.size() != 2 || !offsets_json[0].is_number_unsigned() ||
        !offsets_json[1].is_number_unsigned()) {
      bad("data_offsets " + offsets_json.dump() + " is not two integers >= 0");
    }
    const uint64_t begin = offsets_json[0].get<uint64_t>(), end = offsets_json[1].get<uint64_t>();
    if (begin > end || end > data_size) bad("data offsets outside the file (truncated?)");
    const uint64_t expected = numel * c10::elementSize(dtype);
    if (expected != end - begin) {
      bad("shape needs " + std::to_string(expected) + " bytes but the entry has " + std::to_string(end - begin));
    }
    ranges.push_back({begin, end, name});
    auto t = torch::empty(shape, torch::dtype(dtype));
    if (expected > 0) std::memcpy(t.data_ptr(), bytes.data() + data_start + begin, expected);
    content.tensors.emplace_back(name, t);
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  for (const auto& r : ranges) {
    if (r.begin != covered) {
      fail(std::string(r.begin > covered ? "a gap" : "an overlap") + " in the data before tensor '" + r.name +
           "' (bytes " + std::to_string(r.begin) + ".." + std::to_string(r.end) + ", the previous ends at " +
           std::to_string(covered) + ")");
    }
    covered = r.end;
  }
  if (covered != data_size) {
    fail(std::to_string(data_size - covered) +
         " bytes after the last tensor (a wrong header length, or trailing data)");
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

std::map<std::string, std::string> load_safetensors_metadata(const std::string& path) {
  const uint64_t size = regular_file_size(path);
  std::ifstream in(path, std::ios::binary);
  std::string first8(8, '\0');
  in.read(first8.data(), 8);
  first8.resize(static_cast<size_t>(in.gcount()));
  const uint64_t n = header_length(first8, size, path);
  std::string text(n, '\0');
  in.read(text.data(), static_cast<std::streamsize>(n));
  if (static_cast<uint64_t>(in.gcount()) != n) throw std::runtime_error("cannot read the header of '" + path + "'");
  return metadata_of(parse_header(text, path), path);
}

}  // namespace diffuse
