// Fuzz targets: every parser of bytes that come from outside (files, and the JSON of configs),
// fed arbitrary input. A target returns normally whatever the input: a refusal is an exception it
// catches, anything else (a crash, a sanitizer report, a runaway allocation) is a finding.
//
// Run with libFuzzer (scripts/fuzz: clang, AddressSanitizer + UBSan); every file under
// tests/data/fuzz/<target>/ (seeds, and the inputs that once crashed) is replayed by the test
// suite (test FuzzCorpus.*) in the ordinary build.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace diffuse::fuzz {

using Target = int (*)(const uint8_t* data, size_t size);

int safetensors(const uint8_t* data, size_t size);  // safetensors → checkpoint metadata → configs
int configs(const uint8_t* data, size_t size);      // JSON → UNet, schedule, sampling and diffusers configs
int image(const uint8_t* data, size_t size);        // PNG/JPEG/BMP/… bytes → pixels
int idx(const uint8_t* data, size_t size);          // an IDX file (plain or gzip)
int archive(const uint8_t* data, size_t size);      // a .tar[.gz] image tree → a data set
int captions(const uint8_t* data, size_t size);     // metadata.jsonl / metadata.csv / NAME.txt → captions
int tokenizer(const uint8_t* data, size_t size);    // a tokenizer's JSON, and captions it learns from
// The JSON bodies of `diffuse serve`'s three APIs → requests, and base64 (built with the server:
// DIFFUSE_FUZZ_SERVE).
int requests(const uint8_t* data, size_t size);

struct NamedTarget {
  const char* name;
  Target run;
};
const std::vector<NamedTarget>& targets();

}  // namespace diffuse::fuzz
