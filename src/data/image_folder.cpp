#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <stdexcept>

#include "captions.h"
#include "diffuse/data/dataset.h"
#include "diffuse/io/image.h"
#include "image_tree.h"

namespace fs = std::filesystem;

namespace diffuse {

bool is_image_name(const std::string& name) {
  std::string ext = fs::path(name).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".bmp";
}

std::vector<ImageEntry> select_image_tree(const std::string& name, std::vector<ImageEntry> entries, Split split,
                                          const DataOptions& options, std::vector<ImageEntry>* caption_sources) {
  auto under = [](const ImageEntry& e, const std::string& folder) { return e.relative.rfind(folder + "/", 0) == 0; };
  // A tree wrapped in one folder, as archives often are (flowers/train/CLASS/...): that folder is
  // the root where it holds train/ or test/.
  if (!entries.empty()) {
    const std::string top = entries.front().relative.substr(0, entries.front().relative.find('/'));
    const bool one_top = std::all_of(entries.begin(), entries.end(), [&](auto& e) { return under(e, top); });
    if (one_top && std::any_of(entries.begin(), entries.end(),
                               [&](auto& e) { return under(e, top + "/train") || under(e, top + "/test"); })) {
      for (auto& e : entries) e.relative.erase(0, top.size() + 1);
    }
  }
  // a train/ or test/ folder at the root makes the tree split (the other may be missing: an error
  // when asked for, not the wrong images)
  const bool has_splits = std::any_of(entries.begin(), entries.end(),
                                      [&](auto& e) { return under(e, "train") || under(e, "test"); });
  if (has_splits) {
    const std::string folder = to_string(split);
    entries.erase(std::remove_if(entries.begin(), entries.end(), [&](auto& e) { return !under(e, folder); }),
                  entries.end());
    for (auto& e : entries) e.relative.erase(0, folder.size() + 1);
  }
  std::sort(entries.begin(), entries.end(), [](auto& a, auto& b) { return a.relative < b.relative; });
  const auto captions_begin =
      std::stable_partition(entries.begin(), entries.end(), [](auto& e) { return !is_caption_name(e.relative); });
  if (caption_sources) caption_sources->assign(captions_begin, entries.end());
  entries.erase(captions_begin, entries.end());
  if (options.limit > 0 && static_cast<int64_t>(entries.size()) > options.limit) entries.resize(options.limit);
  if (entries.empty()) {
    throw std::runtime_error("data '" + name + "': no PNG/JPEG/BMP images" +
                             (has_splits ? " under " + to_string(split) + "/" : std::string()));
  }
  return entries;
}

Dataset decode_image_tree(const std::string& name, const std::vector<ImageEntry>& entries, const DataOptions& options,
                          const std::vector<ImageEntry>& caption_sources) {
  if (options.image_size < 0) throw std::runtime_error("data '" + name + "': image size must be positive");
  const int64_t size = options.image_size > 0 ? options.image_size : kFolderImageSize;
  auto what = [&](const ImageEntry& e) { return e.file.empty() ? name + ": " + e.member : e.file; };
  const int64_t n = static_cast<int64_t>(entries.size());
  // Grey only if every image is grey; otherwise RGB.
  std::atomic<int> channels{1};
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end && channels == 1; ++i) {
      const auto& e = entries[i];
      if ((e.file.empty() ? image_bytes_channels(e.bytes, what(e)) : image_file_channels(e.file)) >= 3) channels = 3;
    }
  });

  // Class = first path component ("" when images sit in the root itself).
  auto class_of = [](const ImageEntry& e) {
    const auto slash = e.relative.find('/');
    return slash == std::string::npos ? std::string() : e.relative.substr(0, slash);
  };
  std::map<std::string, int64_t> class_ids;
  for (const auto& e : entries) class_ids.emplace(class_of(e), 0);
  int64_t next_id = 0;
  for (auto& [cls, id] : class_ids) id = next_id++;

  Dataset d;
  d.name = name;
  d.captions = captions_of(name, entries, caption_sources);  // before the decoding: a missing caption fails fast
  d.images = torch::empty({n, channels.load(), size, size}, torch::kUInt8);
  d.labels = torch::empty({n}, torch::kLong);
  auto* labels = d.labels.data_ptr<int64_t>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto& e = entries[i];
      d.images[i].copy_(e.file.empty() ? decode_image_u8(e.bytes, what(e), channels, size)
                                       : load_image_u8(e.file, channels, size));
      labels[i] = class_ids.at(class_of(e));
    }
  });
  d.num_classes = static_cast<int64_t>(class_ids.size());
  return d;
}

Dataset load_image_folder(const std::string& dir, Split split, const DataOptions& options) {
  const fs::path root(dir);
  std::vector<ImageEntry> entries;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.is_regular_file() && (is_image_name(e.path().string()) || is_caption_name(e.path().string()))) {
      entries.push_back({fs::relative(e.path(), root).generic_string(), e.path().string(), {}, {}});
    }
  }
  std::vector<ImageEntry> caption_sources;
  auto images = select_image_tree(dir, std::move(entries), split, options, &caption_sources);
  return decode_image_tree(dir, images, options, caption_sources);
}

}  // namespace diffuse
