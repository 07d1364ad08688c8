// A captioned data set that trains on two cores and where following a caption needs the words'
// order, not only their set: two MNIST digits placed on one canvas, side by side or one above the
// other, each large or small, and a caption generated from what was placed:
//   "3 left of 8", "8 right of 3", "a small 5 above a 1", "1 below a small 5"
// ("3 left of 8" and "8 left of 3" hold the same words). Some (first digit, second digit,
// relation) triples never appear in the training split, so that a model can be asked for
// captions it has not seen.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "diffuse/data/dataset.h"

namespace diffuse {

enum class Relation { left_of, right_of, above, below };

// What one canvas holds: `first` stands in `relation` to `second`.
struct DigitPlacement {
  int64_t first = 0, second = 0;  // the digits (classes 0–9)
  Relation relation = Relation::left_of;
  bool first_small = false, second_small = false;
  int64_t first_source = 0, second_source = 0;  // their indices in the MNIST split
};

// The caption of a placement, e.g. "a small 5 above a 1".
std::string caption_of(const DigitPlacement& p);
// The placement a caption describes (digits, relation, sizes; no sources), or nothing where the
// caption is not one caption_of writes: caption_of(placement_of(c)) == c.
std::optional<DigitPlacement> placement_of(const std::string& caption);
// Whether the placement's (first, second, relation) triple is one the training split leaves out
// (about one in seven, fixed).
bool held_out(const DigitPlacement& p);

struct ComposeOptions {
  int64_t n = 1000;
  int64_t canvas = 32;  // S × S; a large digit is S/2, a small one S/2 · 5/8
  uint64_t seed = 0;
  Split split = Split::train;  // train: held-out triples left out; test: every triple
};

struct CaptionedDigits {
  Dataset images;  // uint8 [n, 1, S, S]; labels: the first digit
  std::vector<std::string> captions;
  std::vector<DigitPlacement> placements;
};

// n canvases from `mnist` (a split of it): digits drawn at random (`seed`), resized, placed in
// their halves (left/right or top/bottom, centred), the canvas the brighter of the two where
// they would meet.
CaptionedDigits compose_captioned_digits(const Dataset& mnist, const ComposeOptions& options);

// Where a placement's digit sits on the canvas: {row, column, size} of its square.
struct DigitCell {
  int64_t row = 0, column = 0, size = 0;
};
DigitCell cell_of(const DigitPlacement& p, bool first, int64_t canvas);

}  // namespace diffuse
