// Base64 (RFC 4648, with padding): how JSON carries PNG images in all three APIs.
#pragma once

#include <string>

namespace diffuse::serve {

std::string base64_encode(const std::string& bytes);
// Throws std::invalid_argument on a character outside the alphabet or a bad length; a
// "data:…;base64," prefix is skipped.
std::string base64_decode(const std::string& text);

}  // namespace diffuse::serve
