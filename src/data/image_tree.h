// A tree of images as the folder and archive loaders find it (private to src/data): each image's
// path below the tree's root and its bytes or file, assembled into a Dataset the same way for both.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"

namespace diffuse {

struct ImageEntry {
  std::string relative;  // below the root, '/'-separated: "train/cat/0001.jpg"
  std::string file;      // the file to decode (a folder's image), or empty
  std::string bytes;     // else the bytes themselves (an archive member's, read once selected)
  std::string member;    // an archive member's full name, for messages
  int64_t index = -1;    // and its position in the archive
};

// Whether a name ends in .png, .jpg, .jpeg or .bmp (any case).
bool is_image_name(const std::string& name);

// The images a Dataset is made of, without reading them. `entries` may hold caption files too
// (captions.h): they are moved to *caption_sources, with the images' paths. A tree wrapped in one folder that holds
// train/ or test/ is read from inside that folder. Then the images of `split` (those under train/
// or test/ where the root holds either, else all), sorted by path, the first options.limit of them,
// with `relative` below the split's folder. Throws where none is left. `name` names the data in
// the messages.
std::vector<ImageEntry> select_image_tree(const std::string& name, std::vector<ImageEntry> entries, Split split,
                                          const DataOptions& options, std::vector<ImageEntry>* caption_sources);

// Selected entries (their files or bytes) decoded to [N, C, size, size] uint8: grey only if every
// image is grey, else RGB. The class is the first folder of `relative`; classes are numbered in
// sorted order. Captions come from `caption_sources` (captions.h).
Dataset decode_image_tree(const std::string& name, const std::vector<ImageEntry>& entries, const DataOptions& options,
                          const std::vector<ImageEntry>& caption_sources);

}  // namespace diffuse
