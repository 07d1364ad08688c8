// A tree of images as the folder and archive loaders find it (private to src/data): each image's
// path below the tree's root and its bytes or file, assembled into a Dataset the same way for both.
#pragma once

#include <string>
#include <vector>

#include "diffuse/data/dataset.h"

namespace diffuse {

struct ImageEntry {
  std::string relative;  // below the root, '/'-separated: "train/cat/0001.jpg"
  std::string file;      // the file to decode, or empty
  std::string bytes;     // else the bytes themselves (an archive's member)
};

// Whether a name ends in .png, .jpg, .jpeg or .bmp (any case).
bool is_image_name(const std::string& name);

// A tree wrapped in one folder that holds train/ or test/ is read from inside that folder. Then the
// images of `split` (those under train/ or test/ where the root holds either, else all), sorted by path,
// the first options.limit of them, decoded to [N, C, size, size] uint8: grey only if every image
// is grey, else RGB. The class is the first folder below the root (or below train/ and test/);
// classes are numbered in sorted order. `name` names the data in the result and the messages.
Dataset image_tree_dataset(const std::string& name, std::vector<ImageEntry> entries, Split split,
                           const DataOptions& options);

}  // namespace diffuse
