// Files are written whole or not at all: to a temporary file beside the target, then renamed.
#pragma once

#include <string>

namespace diffuse {

// Writes `bytes` to `path` atomically; throws std::runtime_error naming the path on failure.
void write_file_atomic(const std::string& path, const std::string& bytes);

// Reads a whole file; throws std::runtime_error naming the path if it cannot.
std::string read_file(const std::string& path);

}  // namespace diffuse
