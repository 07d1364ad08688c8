// A word-level tokenizer learned from the training captions, stored in the checkpoint.
//
// Ids: 0 <pad>, 1 <start>, 2 <unknown>, then the captions' words by falling count (ties in
// alphabetical order), so that the same captions always give the same vocabulary. A prompt
// becomes a fixed-length row of max_tokens ids:
//   "3 left of 8"  →  [<start>, 3, left, of, 8, <pad>, …, <pad>]
// <start> is always there, so that even the empty prompt ∅ (classifier-free guidance's
// unconditional input, [<start>, <pad>, …]) has one token to attend to; <pad> is what the
// attention masks out.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_map>
#include <vector>

namespace diffuse {

class Tokenizer {
 public:
  static constexpr int64_t kPad = 0, kStart = 1, kUnknown = 2, kSpecialTokens = 3;
  static constexpr int64_t kMaxTokens = 256;  // longest row a tokenizer may produce
  static constexpr int64_t kMaxVocabulary = 65536;
  static constexpr size_t kMaxWordBytes = 64;

  // Words of `captions` seen at least `min_count` times, at most max_vocabulary − 3 of them;
  // max_tokens: the longest caption's words + 1 (<start>).
  static Tokenizer learn(const std::vector<std::string>& captions, int64_t min_count = 1,
                         int64_t max_vocabulary = kMaxVocabulary);
  // words: ids 3, 4, … in order (unique, non-empty, no spaces); throws naming the rule broken.
  Tokenizer(std::vector<std::string> words, int64_t max_tokens);

  // Lower-case runs of letters and digits; any other visible character is a word of its own
  // ("a 3, left" → a, 3, ",", left). Bytes ≥ 0x80 (UTF-8) belong to runs.
  static std::vector<std::string> split_words(const std::string& text);

  // [max_tokens] int64 (see above); words beyond max_tokens − 1 are dropped (truncated() says so).
  torch::Tensor encode(const std::string& text) const;
  torch::Tensor encode(const std::vector<std::string>& texts) const;  // [N, max_tokens]
  // The words of a row, joined by spaces (<unknown> for id 2), stopping at the first <pad>.
  std::string decode(const torch::Tensor& ids) const;
  bool truncated(const std::string& text) const;
  // The words of `text` that are not in the vocabulary (they become <unknown>).
  std::vector<std::string> unknown_words(const std::string& text) const;

  int64_t vocab_size() const { return kSpecialTokens + static_cast<int64_t>(words_.size()); }
  int64_t max_tokens() const { return max_tokens_; }
  const std::vector<std::string>& words() const { return words_; }

  nlohmann::json to_json() const;                       // {"kind": "words", "max_tokens", "words"}
  static Tokenizer from_json(const nlohmann::json& j);  // throws naming the bad field

 private:
  std::vector<std::string> words_;
  std::unordered_map<std::string, int64_t> ids_;
  int64_t max_tokens_ = 0;
};

}  // namespace diffuse
