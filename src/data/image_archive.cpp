// Image trees inside .tar.gz, .tgz or .tar archives, read through libarchive without extracting:
// the members are held in memory (the CIFAR-10 JPEG archive: 19 MB for 60,000 images) and decoded
// as image_folder.cpp decodes files.
#include <stdexcept>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"
#include "diffuse_build_config.h"
#include "image_tree.h"

#if DIFFUSE_HAVE_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>

#include <memory>
#endif

namespace diffuse {

bool image_archives_built() { return DIFFUSE_HAVE_LIBARCHIVE != 0; }

bool is_image_archive_path(const std::string& path) {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".tar.gz") || ends_with(".tgz") || ends_with(".tar");
}

Dataset load_image_archive(const std::string& path, Split split, const DataOptions& options) {
#if DIFFUSE_HAVE_LIBARCHIVE
  std::unique_ptr<archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_all(a.get());
  auto fail = [&](const std::string& what) {
    const char* why = archive_error_string(a.get());
    return std::runtime_error("data '" + path + "': " + what + (why ? std::string(": ") + why : std::string()));
  };
  if (archive_read_open_filename(a.get(), path.c_str(), 1 << 16) != ARCHIVE_OK) {
    throw fail("cannot open the archive (truncated or corrupt?)");
  }
  std::vector<ImageEntry> entries;
  archive_entry* entry = nullptr;
  int status = ARCHIVE_OK;
  while ((status = archive_read_next_header(a.get(), &entry)) == ARCHIVE_OK) {
    std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    while (name.rfind("./", 0) == 0) name.erase(0, 2);
    if (archive_entry_filetype(entry) != AE_IFREG || !is_image_name(name)) continue;
    const auto size = archive_entry_size(entry);
    std::string bytes(static_cast<size_t>(size > 0 ? size : 0), '\0');
    if (archive_read_data(a.get(), bytes.data(), bytes.size()) != static_cast<la_ssize_t>(bytes.size())) {
      throw fail("cannot read member '" + name + "' (truncated or corrupt archive?)");
    }
    entries.push_back({name, {}, std::move(bytes)});
  }
  if (status != ARCHIVE_EOF) {
    throw fail("cannot read past member " + std::to_string(entries.size()) + " (truncated or corrupt?)");
  }
  return image_tree_dataset(path, std::move(entries), split, options);
#else
  (void)split;
  (void)options;
  throw std::runtime_error("data '" + path + "': this build reads no archives (built without libarchive); extract it "
                           "and pass the folder");
#endif
}

}  // namespace diffuse
