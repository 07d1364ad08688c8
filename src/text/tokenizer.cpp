#include "diffuse/text/tokenizer.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <stdexcept>

#include "diffuse/io/json_value.h"

namespace diffuse {

std::vector<std::string> Tokenizer::split_words(const std::string& text) {
  std::vector<std::string> words;
  std::string run;
  auto flush = [&] {
    if (!run.empty()) words.push_back(run);
    run.clear();
  };
  for (const unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      run += static_cast<char>(std::tolower(c));
    } else {
      flush();
      if (std::isgraph(c)) words.emplace_back(1, static_cast<char>(c));
    }
  }
  flush();
  return words;
}

Tokenizer Tokenizer::learn(const std::vector<std::string>& captions, int64_t min_count, int64_t max_vocabulary) {
  if (max_vocabulary <= kSpecialTokens || max_vocabulary > kMaxVocabulary) {
    throw std::invalid_argument("tokenizer: the vocabulary must hold 4 to " + std::to_string(kMaxVocabulary) +
                                " tokens, got " + std::to_string(max_vocabulary));
  }
  std::map<std::string, int64_t> counts;
  size_t longest = 0;
  for (const auto& caption : captions) {
    const auto words = split_words(caption);
    longest = std::max(longest, words.size());
    for (const auto& w : words) {
      if (w.size() <= kMaxWordBytes) ++counts[w];
    }
  }
  std::vector<std::pair<std::string, int64_t>> ranked(counts.begin(), counts.end());  // alphabetical
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  std::vector<std::string> words;
  for (const auto& [word, count] : ranked) {
    if (count < min_count || static_cast<int64_t>(words.size()) + kSpecialTokens >= max_vocabulary) break;
    words.push_back(word);
  }
  const int64_t max_tokens = std::min<int64_t>(static_cast<int64_t>(longest) + 1, kMaxTokens);
  return Tokenizer(std::move(words), std::max<int64_t>(max_tokens, 2));
}

Tokenizer::Tokenizer(std::vector<std::string> words, int64_t max_tokens)
    : words_(std::move(words)), max_tokens_(max_tokens) {
  if (max_tokens < 2 || max_tokens > kMaxTokens) {
    throw std::invalid_argument("tokenizer: max_tokens = " + std::to_string(max_tokens) + ": must be in [2, " +
                                std::to_string(kMaxTokens) + "]");
  }
  if (vocab_size() > kMaxVocabulary) {
    throw std::invalid_argument("tokenizer: " + std::to_string(words_.size()) + " words: at most " +
                                std::to_string(kMaxVocabulary - kSpecialTokens));
  }
  for (size_t i = 0; i < words_.size(); ++i) {
    const auto& w = words_[i];
    const bool one_word = split_words(w) == std::vector<std::string>{w};
    if (w.empty() || w.size() > kMaxWordBytes || !one_word) {
      throw std::invalid_argument("tokenizer: word " + std::to_string(i) + " '" + w.substr(0, kMaxWordBytes) +
                                  "' is not one lower-case word of 1 to " + std::to_string(kMaxWordBytes) + " bytes");
    }
    if (!ids_.emplace(w, kSpecialTokens + static_cast<int64_t>(i)).second) {
      throw std::invalid_argument("tokenizer: the word '" + w + "' appears twice");
    }
  }
}

torch::Tensor Tokenizer::encode(const std::string& text) const {
  auto row = torch::full({max_tokens_}, kPad, torch::kLong);
  auto ids = row.accessor<int64_t, 1>();
  ids[0] = kStart;
  int64_t n = 1;
  for (const auto& w : split_words(text)) {
    if (n == max_tokens_) break;
    const auto it = ids_.find(w);
    ids[n++] = it == ids_.end() ? kUnknown : it->second;
  }
  return row;
}

torch::Tensor Tokenizer::encode(const std::vector<std::string>& texts) const {
  auto rows = torch::empty({static_cast<int64_t>(texts.size()), max_tokens_}, torch::kLong);
  for (size_t i = 0; i < texts.size(); ++i) rows[static_cast<int64_t>(i)].copy_(encode(texts[i]));
  return rows;
}

std::string Tokenizer::decode(const torch::Tensor& ids) const {
  TORCH_CHECK(ids.dim() == 1, "Tokenizer::decode: expected one row of ids, got ", ids.sizes());
  const auto row = ids.to(torch::kLong).contiguous();
  std::string text;
  for (int64_t i = 0; i < row.numel(); ++i) {
    const int64_t id = row[i].item<int64_t>();
    if (id == kPad) break;
    if (id == kStart) continue;
    if (id < 0 || id >= vocab_size())
      throw std::out_of_range("Tokenizer::decode: id " + std::to_string(id) + " is not in the vocabulary");
    text += (text.empty() ? "" : " ") + (id == kUnknown ? std::string("<unknown>") : words_[id - kSpecialTokens]);
  }
  return text;
}

bool Tokenizer::truncated(const std::string& text) const {
  return static_cast<int64_t>(split_words(text).size()) > max_tokens_ - 1;
}

std::vector<std::string> Tokenizer::unknown_words(const std::string& text) const {
  std::vector<std::string> unknown;
  for (const auto& w : split_words(text)) {
    if (!ids_.count(w)) unknown.push_back(w);
  }
  return unknown;
}

nlohmann::json Tokenizer::to_json() const {
  return {{"kind", "words"}, {"max_tokens", max_tokens_}, {"words", words_}};
}

Tokenizer Tokenizer::from_json(const nlohmann::json& j) {
  const std::string what = "tokenizer";
  if (json_field<std::string>(j, "kind", what) != "words") {
    throw std::runtime_error("tokenizer: kind '" + j.at("kind").get<std::string>() + "' is not known (expected words)");
  }
  // the list's length before its words are read (json_field says what else is wrong with it)
  if (j.contains("words") && j["words"].is_array() &&
      static_cast<int64_t>(j["words"].size()) > kMaxVocabulary - kSpecialTokens) {
    throw std::runtime_error("tokenizer field 'words': expected a list of at most " +
                             std::to_string(kMaxVocabulary - kSpecialTokens) + " words");
  }
  try {
    return Tokenizer(json_field<std::vector<std::string>>(j, "words", what),
                     json_field<int64_t>(j, "max_tokens", what));
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(e.what());
  }
}

}  // namespace diffuse
