#include "diffuse/data/captioned_digits.h"

#include <cctype>
#include <random>
#include <stdexcept>

namespace diffuse {

namespace {

const char* relation_words(Relation r) {
  switch (r) {
    case Relation::left_of:
      return "left of";
    case Relation::right_of:
      return "right of";
    case Relation::above:
      return "above";
    case Relation::below:
      return "below";
  }
  return "?";
}

bool horizontal(Relation r) { return r == Relation::left_of || r == Relation::right_of; }

// Whether the first digit takes the first half (left, or top).
bool first_takes_first_half(Relation r) { return r == Relation::left_of || r == Relation::above; }

}  // namespace

std::string caption_of(const DigitPlacement& p) {
  const bool any_small = p.first_small || p.second_small;
  auto words = [&](int64_t digit, bool small) {
    if (small) return "a small " + std::to_string(digit);
    return (any_small ? (digit == 8 ? "an " : "a ") : "") + std::to_string(digit);  // "an 8": eight
  };
  return words(p.first, p.first_small) + " " + relation_words(p.relation) + " " + words(p.second, p.second_small);
}

std::optional<DigitPlacement> placement_of(const std::string& caption) {
  std::vector<std::string> words;
  {
    std::string word;
    for (const char c : caption + " ") {
      if (c == ' ') {
        if (!word.empty()) words.push_back(word);
        word.clear();
      } else {
        word += c;
      }
    }
  }
  size_t at = 0;
  // [a | an] [small] DIGIT
  auto digit = [&](int64_t& value, bool& small) {
    if (at < words.size() && (words[at] == "a" || words[at] == "an")) ++at;
    small = at < words.size() && words[at] == "small";
    if (small) ++at;
    if (at >= words.size() || words[at].size() != 1 || !std::isdigit(static_cast<unsigned char>(words[at][0]))) {
      return false;
    }
    value = words[at++][0] - '0';
    return true;
  };
  DigitPlacement p;
  if (!digit(p.first, p.first_small) || at >= words.size()) return std::nullopt;
  bool found = false;
  for (const Relation r : {Relation::left_of, Relation::right_of, Relation::above, Relation::below}) {
    const std::string phrase = relation_words(r);
    const bool two_words = phrase.find(' ') != std::string::npos;
    const std::string here = two_words && at + 1 < words.size() ? words[at] + " " + words[at + 1] : words[at];
    if (here == phrase) {
      p.relation = r;
      at += two_words ? 2 : 1;
      found = true;
      break;
    }
  }
  if (!found || !digit(p.second, p.second_small) || at != words.size()) return std::nullopt;
  if (caption_of(p) != caption) return std::nullopt;  // ("a" where none belongs, two small digits)
  return p;
}

bool held_out(const DigitPlacement& p) {
  // the triple's position in a fixed order, every seventh left out of training
  return (p.first * 10 + p.second + 100 * static_cast<int64_t>(p.relation)) % 7 == 3;
}

DigitCell cell_of(const DigitPlacement& p, bool first, int64_t canvas) {
  const int64_t half = canvas / 2;
  const bool small = first ? p.first_small : p.second_small;
  const int64_t size = small ? half * 5 / 8 : half;
  const bool in_first_half = first == first_takes_first_half(p.relation);
  const int64_t along = (in_first_half ? 0 : half) + (half - size) / 2;  // centred in its half
  const int64_t across = (canvas - size) / 2;                            // centred across
  return horizontal(p.relation) ? DigitCell{across, along, size} : DigitCell{along, across, size};
}

CaptionedDigits compose_captioned_digits(const Dataset& mnist, const ComposeOptions& options) {
  if (mnist.size() == 0 || !mnist.labels.defined())
    throw std::invalid_argument("compose: MNIST images with labels are needed");
  if (options.canvas < 16 || options.canvas > 256)
    throw std::invalid_argument("compose: the canvas must be 16 to 256 pixels");
  if (options.n < 1) throw std::invalid_argument("compose: n must be positive");
  std::mt19937_64 gen(options.seed);
  auto uniform = [&](int64_t k) { return static_cast<int64_t>(gen() % static_cast<uint64_t>(k)); };
  const auto labels = mnist.labels.contiguous();
  const auto* label = labels.data_ptr<int64_t>();

  // every digit at both sizes, resized once (one call over the split, not two per canvas)
  const int64_t half = options.canvas / 2;
  const auto large = resize_images(mnist.images, half), small = resize_images(mnist.images, half * 5 / 8);

  CaptionedDigits out;
  out.images.name = "captioned-digits";
  out.images.num_classes = 10;
  out.images.images = torch::zeros({options.n, 1, options.canvas, options.canvas}, torch::kUInt8);
  out.images.labels = torch::empty({options.n}, torch::kLong);
  for (int64_t i = 0; i < options.n; ++i) {
    DigitPlacement p;
    do {
      p.first_source = uniform(mnist.size());
      p.second_source = uniform(mnist.size());
      p.first = label[p.first_source];
      p.second = label[p.second_source];
      p.relation = static_cast<Relation>(uniform(4));
      p.first_small = uniform(4) == 0;  // one digit in four small
      p.second_small = !p.first_small && uniform(3) == 0;
    } while (options.split == Split::train && held_out(p));
    for (const bool first : {true, false}) {
      const auto cell = cell_of(p, first, options.canvas);
      const bool is_small = first ? p.first_small : p.second_small;
      const auto scaled = (is_small ? small : large)[first ? p.first_source : p.second_source];
      auto target = out.images.images[i].narrow(1, cell.row, cell.size).narrow(2, cell.column, cell.size);
      target.copy_(torch::maximum(target, scaled));
    }
    out.images.labels[i] = p.first;
    out.captions.push_back(caption_of(p));
    out.placements.push_back(p);
  }
  return out;
}

}  // namespace diffuse
