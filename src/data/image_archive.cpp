// Image trees inside .tar.gz, .tgz or .tar archives, read through libarchive without extracting:
// the selected members (a split, --limit) are held in memory (the CIFAR-10 JPEG archive's test
// split: 3 MB) and decoded as image_folder.cpp decodes files.
#include <stdexcept>
#include <string>
#include <vector>

#include "captions.h"
#include "diffuse/data/dataset.h"
#include "diffuse/io/image.h"
#include "diffuse_build_config.h"
#include "image_tree.h"

#if DIFFUSE_HAVE_LIBARCHIVE
#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <memory>
#include <unordered_map>
#endif

namespace diffuse {

bool image_archives_built() { return DIFFUSE_HAVE_LIBARCHIVE != 0; }

bool is_image_archive_path(const std::string& path) {
  auto ends_with = [&](const std::string& suffix) {
    return path.size() >= suffix.size() && path.compare(path.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".tar.gz") || ends_with(".tgz") || ends_with(".tar");
}

#if DIFFUSE_HAVE_LIBARCHIVE
namespace {

// One pass over an archive's members, in archive order: visit(index, name, archive, entry, fail)
// for each regular file whose name is an image's or a caption file's, `fail(what)` making the error to throw; visit
// returns false to stop early. A visitor reads its member (archive_read_data) or leaves it to be
// skipped.
template <class Visit>
void for_each_image_member(const std::string& path, Visit&& visit) {
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
  archive_entry* entry = nullptr;
  int status = ARCHIVE_OK;
  int64_t index = 0;
  for (; (status = archive_read_next_header(a.get(), &entry)) == ARCHIVE_OK; ++index) {
    std::string name = archive_entry_pathname(entry) ? archive_entry_pathname(entry) : "";
    while (name.rfind("./", 0) == 0) name.erase(0, 2);
    // a hard link carries no bytes of its own (tar stores the second name of a file that way)
    if (archive_entry_hardlink(entry) && is_image_name(name)) {
      throw fail("member '" + name + "' is a hard link to '" + archive_entry_hardlink(entry) +
                 "'; make the archive with tar --hard-dereference, or extract it and pass the folder");
    }
    if (archive_entry_filetype(entry) != AE_IFREG || !(is_image_name(name) || is_caption_name(name))) continue;
    if (!visit(index, name, a.get(), entry, fail)) return;
  }
  if (status != ARCHIVE_EOF) {
    throw fail("cannot read past member " + std::to_string(index) + " (truncated or corrupt?)");
  }
}

}  // namespace
#endif

// Two passes, so that only the images asked for are held in memory: the names first (which
// also finds a truncated archive), then the bytes of the selected members, up to the last of them.
Dataset load_image_archive(const std::string& path, Split split, const DataOptions& options) {
#if DIFFUSE_HAVE_LIBARCHIVE
  std::vector<ImageEntry> entries;
  for_each_image_member(path, [&](int64_t index, const std::string& name, archive*, archive_entry*, auto&&) {
    entries.push_back({name, {}, {}, name, index});
    return true;
  });
  std::vector<ImageEntry> caption_sources;
  auto selected = select_image_tree(path, std::move(entries), split, options, &caption_sources);
  std::unordered_map<int64_t, ImageEntry*> by_index;
  int64_t last = -1;
  for (auto* list : {&selected, &caption_sources}) {
    for (auto& e : *list) {
      by_index[e.index] = &e;
      last = std::max(last, e.index);
    }
  }
  for_each_image_member(path, [&](int64_t index, const std::string& name, archive* a, archive_entry* entry,
                                  auto&& fail) {
    if (const auto it = by_index.find(index); it != by_index.end()) {
      const auto size = archive_entry_size(entry);
      // the header's size, checked before it is allocated (a sparse member can claim gigabytes)
      const bool image = is_image_name(name);
      const uint64_t limit = image ? kMaxImageFileBytes : kMaxMetadataFileBytes;
      if (size > 0 && static_cast<uint64_t>(size) > limit) {
        throw fail("member '" + name + "' claims " + std::to_string(size) + " bytes, more than the " +
                   std::to_string(limit) + (image ? " an image file" : " a caption file") + " may have");
      }
      std::string& bytes = it->second->bytes;
      bytes.assign(static_cast<size_t>(size > 0 ? size : 0), '\0');
      if (archive_read_data(a, bytes.data(), bytes.size()) != static_cast<la_ssize_t>(bytes.size())) {
        throw fail("cannot read member '" + name + "' (truncated or corrupt archive?)");
      }
    }
    return index < last;
  });
  return decode_image_tree(path, selected, options, caption_sources);
#else
  (void)split;
  (void)options;
  throw std::runtime_error("data '" + path + "': this build reads no archives (built without libarchive); extract it "
                           "and pass the folder");
#endif
}

}  // namespace diffuse
