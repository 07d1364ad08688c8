// libFuzzer's entry point for one target, chosen when compiled (-DDIFFUSE_FUZZ_TARGET=name).
#include "fuzz_targets.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return diffuse::fuzz::DIFFUSE_FUZZ_TARGET(data, size);
}
