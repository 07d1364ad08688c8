// The captioned digits (data/captioned_digits.h): captions from what was placed, each digit where
// its caption puts it (pixel for pixel the resized MNIST digit), the held-out captions absent from
// the training split, the same canvases for the same seed.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <sstream>

#include "diffuse/data/captioned_digits.h"

using namespace diffuse;

namespace {

const Dataset& mnist_test() {
  static const Dataset d = load_dataset("mnist", Split::test, DataOptions{0, 2000});
  return d;
}

std::multiset<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::multiset<std::string> w;
  for (std::string x; in >> x;) w.insert(x);
  return w;
}

}  // namespace

TEST(CaptionedDigits, CaptionsSayWhatWasPlacedAndTheirOrderMatters) {
  DigitPlacement p{3, 8, Relation::left_of};
  EXPECT_EQ(caption_of(p), "3 left of 8");
  p = {5, 1, Relation::above, /*first_small=*/true};
  EXPECT_EQ(caption_of(p), "a small 5 above a 1");
  p = {8, 3, Relation::right_of, false, /*second_small=*/true};
  EXPECT_EQ(caption_of(p), "an 8 right of a small 3");
  const DigitPlacement a{3, 8, Relation::left_of}, b{8, 3, Relation::left_of};
  EXPECT_EQ(words(caption_of(a)), words(caption_of(b)));  // the same words …
  EXPECT_NE(caption_of(a), caption_of(b));                // … in another order, another picture
}

TEST(CaptionedDigits, EachDigitIsTheResizedMnistDigitWhereItsCaptionPutsIt) {
  ComposeOptions o;
  o.n = 64;
  o.seed = 5;
  const auto c = compose_captioned_digits(mnist_test(), o);
  ASSERT_EQ(c.images.images.sizes(), (std::vector<int64_t>{64, 1, 32, 32}));
  ASSERT_EQ(c.captions.size(), 64u);
  std::set<Relation> relations;
  int64_t small = 0;
  for (int64_t i = 0; i < 64; ++i) {
    const auto& p = c.placements[i];
    relations.insert(p.relation);
    small += p.first_small || p.second_small;
    EXPECT_EQ(mnist_test().labels[p.first_source].item<int64_t>(), p.first);
    auto rest = c.images.images[i][0].clone();
    for (const bool first : {true, false}) {
      const auto cell = cell_of(p, first, 32);
      const auto source = mnist_test().images[first ? p.first_source : p.second_source].unsqueeze(0);
      const auto crop = c.images.images[i].narrow(1, cell.row, cell.size).narrow(2, cell.column, cell.size);
      EXPECT_TRUE(torch::equal(crop, resize_images(source, cell.size)[0])) << c.captions[i];
      rest.narrow(0, cell.row, cell.size).narrow(1, cell.column, cell.size).zero_();
      // the first digit sits on the side its relation names
      if (first) {
        const int64_t centre =
            2 * (p.relation == Relation::left_of || p.relation == Relation::right_of ? cell.column : cell.row) +
            cell.size;
        const bool first_half = centre < 32;
        EXPECT_EQ(first_half, p.relation == Relation::left_of || p.relation == Relation::above) << c.captions[i];
      }
    }
    EXPECT_EQ(rest.max().item<int>(), 0) << "pixels outside the two digits: " << c.captions[i];
  }
  EXPECT_EQ(relations.size(), 4u);
  EXPECT_GT(small, 0);
}

TEST(CaptionedDigits, HeldOutCaptionsAreNeverInTheTrainingSplit) {
  int held = 0;
  for (int64_t a = 0; a < 10; ++a)
    for (int64_t b = 0; b < 10; ++b)
      for (int r = 0; r < 4; ++r) held += held_out(DigitPlacement{a, b, static_cast<Relation>(r)});
  EXPECT_GT(held, 400 / 10);  // about one in seven of the 400 triples
  EXPECT_LT(held, 400 / 5);
  ComposeOptions o;
  o.n = 500;
  const auto train = compose_captioned_digits(mnist_test(), o);
  EXPECT_TRUE(std::none_of(train.placements.begin(), train.placements.end(), held_out));
  o.split = Split::test;
  const auto test = compose_captioned_digits(mnist_test(), o);
  EXPECT_TRUE(std::any_of(test.placements.begin(), test.placements.end(), held_out));
  // the same seed, the same canvases and captions
  const auto again = compose_captioned_digits(mnist_test(), o);
  EXPECT_TRUE(torch::equal(again.images.images, test.images.images));
  EXPECT_EQ(again.captions, test.captions);
}
