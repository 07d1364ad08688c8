#include "diffuse/serve/base64.h"

#include <array>
#include <stdexcept>

namespace diffuse::serve {

namespace {
constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

std::string base64_encode(const std::string& bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {  // 3 bytes → 4 characters of 6 bits
    const uint32_t v = static_cast<uint8_t>(bytes[i]) << 16 | static_cast<uint8_t>(bytes[i + 1]) << 8 |
                       static_cast<uint8_t>(bytes[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += kAlphabet[(v >> s) & 63];
  }
  const size_t rest = bytes.size() - i;
  if (rest > 0) {
    uint32_t v = static_cast<uint8_t>(bytes[i]) << 16;
    if (rest == 2) v |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    out += kAlphabet[(v >> 18) & 63];
    out += kAlphabet[(v >> 12) & 63];
    out += rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

std::string base64_decode(const std::string& text) {
  std::array<int, 256> value;
  value.fill(-1);
  for (int k = 0; k < 64; ++k) value[static_cast<uint8_t>(kAlphabet[k])] = k;
  size_t begin = 0;
  if (text.rfind("data:", 0) == 0) {
    const auto comma = text.find(";base64,");
    if (comma == std::string::npos) throw std::invalid_argument("a data URL that is not base64");
    begin = comma + 8;
  }
  std::string out;
  uint32_t bits = 0;
  int count = 0, padding = 0;
  size_t symbols = 0;
  for (size_t i = begin; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n' || c == '\r') continue;
    ++symbols;
    if (c == '=') {
      ++padding;
      continue;
    }
    if (padding > 0 || value[static_cast<uint8_t>(c)] < 0) {
      throw std::invalid_argument("not base64: character " + std::to_string(i - begin));
    }
    bits = bits << 6 | static_cast<uint32_t>(value[static_cast<uint8_t>(c)]);
    if (++count == 4) {
      out += static_cast<char>(bits >> 16 & 255);
      out += static_cast<char>(bits >> 8 & 255);
      out += static_cast<char>(bits & 255);
      bits = 0;
      count = 0;
    }
  }
  if (symbols % 4 != 0 || padding > 2 || (padding > 0 && count + padding != 4)) {
    throw std::invalid_argument("not base64: its length is not a multiple of 4");
  }
  if (count == 3) {
    out += static_cast<char>(bits >> 10 & 255);
    out += static_cast<char>(bits >> 2 & 255);
  } else if (count == 2) {
    out += static_cast<char>(bits >> 4 & 255);
  }
  return out;
}

}  // namespace diffuse::serve
