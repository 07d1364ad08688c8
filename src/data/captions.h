// Captions of an image tree (private to src/data), in the conventions of Hugging Face's image
// folders, for folders and archives alike:
//   NAME.txt beside NAME.png                 the whole file is the caption
//   metadata.jsonl in a folder               one JSON object a line: {"file_name": "a.png", "text": "…"}
//   metadata.csv in a folder                 a header row naming file_name and text, then one row an image
// file_name is relative to the metadata file's folder; "caption" is read where "text" is absent.
#pragma once

#include <string>
#include <vector>

#include "image_tree.h"

namespace diffuse {

constexpr uint64_t kMaxCaptionFileBytes = uint64_t{1} << 20;     // NAME.txt
constexpr uint64_t kMaxMetadataFileBytes = uint64_t{256} << 20;  // metadata.jsonl / .csv

// Whether a member of a tree may hold captions (by its name).
bool is_caption_name(const std::string& name);

// The caption of each image (in `images`' order), from the caption files among `sources` (their
// bytes, or their files read here). No metadata file and no NAME.txt beside an image: an empty
// result. Otherwise every image needs a caption; errors name the image, the file and the line.
std::vector<std::string> captions_of(const std::string& name, const std::vector<ImageEntry>& images,
                                     const std::vector<ImageEntry>& sources);

}  // namespace diffuse
