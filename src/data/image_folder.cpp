#include <algorithm>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "diffuse/data/dataset.h"
#include "diffuse/io/image.h"

namespace fs = std::filesystem;

namespace diffuse {

namespace {
bool is_image_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}
}  // namespace

Dataset load_image_folder(const std::string& dir, Split split, const DataOptions& options) {
  fs::path root(dir);
  if (fs::is_directory(root / "train") && fs::is_directory(root / "test")) root /= to_string(split);
  std::vector<fs::path> files;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file() && is_image_file(e.path())) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (options.limit > 0 && static_cast<int64_t>(files.size()) > options.limit) files.resize(options.limit);
  if (files.empty()) throw std::runtime_error("data '" + dir + "': no PNG/JPEG/BMP images under '" + root.string() + "'");
  if (options.image_size < 1) throw std::runtime_error("data '" + dir + "': image size must be positive");

  // Grey only if every file is grey; otherwise RGB.
  int channels = 1;
  for (const auto& f : files)
    if (image_file_channels(f.string()) >= 3) channels = 3;

  // Class = first path component below the root ("" when images sit in the root itself).
  auto class_of = [&](const fs::path& f) {
    const auto rel = fs::relative(f, root);
    return std::distance(rel.begin(), rel.end()) > 1 ? rel.begin()->string() : std::string();
  };
  std::map<std::string, int64_t> class_ids;
  for (const auto& f : files) class_ids.emplace(class_of(f), 0);
  int64_t next_id = 0;
  for (auto& [name, id] : class_ids) id = next_id++;

  const int64_t n = static_cast<int64_t>(files.size());
  Dataset d;
  d.name = dir;
  d.images = torch::empty({n, channels, options.image_size, options.image_size}, torch::kUInt8);
  d.labels = torch::empty({n}, torch::kLong);
  for (int64_t i = 0; i < n; ++i) {
    d.images[i].copy_(load_image_u8(files[i].string(), channels, options.image_size));
    d.labels[i] = class_ids.at(class_of(files[i]));
  }
  d.num_classes = static_cast<int64_t>(class_ids.size());
  return d;
}

}  // namespace diffuse
