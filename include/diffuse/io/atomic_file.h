// Files are written whole or not at all: to a temporary file beside the target, then renamed.
#pragma once

#include <cstdint>
#include <limits>
#include <string>

namespace diffuse {

// The temporary file beside `path` that a whole-or-nothing write goes to before its rename
// (`path`.tmp.<pid>: another process writing the same file uses another).
std::string temporary_path_beside(const std::string& path);

// Removes the temporaries (`NAME.tmp.<pid>`) in `dir` that processes no longer running left
// behind when they were killed inside a write; returns how many it removed.
int remove_stale_temporaries(const std::string& dir);

// Writes `bytes` to `path` atomically; throws std::runtime_error naming the path on failure.
// `durable`: fsync before the rename (checkpoints, images); a cache that can be rebuilt skips it.
void write_file_atomic(const std::string& path, const std::string& bytes, bool durable = true);

// The size of the regular file at `path`; throws std::runtime_error naming the path where it cannot
// be read or is not a regular file (a device such as /dev/zero, a pipe, a folder).
uint64_t regular_file_size(const std::string& path);

// Reads a whole regular file of at most `max_bytes`; throws std::runtime_error naming the path if
// it cannot, if it is not a regular file (a device such as /dev/zero, a pipe, a folder) or if it is
// larger, before reading any of it.
std::string read_file(const std::string& path, uint64_t max_bytes = std::numeric_limits<uint64_t>::max());

}  // namespace diffuse
