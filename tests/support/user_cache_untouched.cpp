// The test binary run by hand (ctest sets DIFFUSE_TIMING_CACHE=0 itself, CMakeLists.txt) must not
// read or write the user's timing cache either: its CLI tests start `diffuse` with tiny models and
// under ONEDNN_MAX_CPU_ISA caps. Set before main, so that the process's own cache (made on first
// use) and every `diffuse` it starts see it; tests of the cache set DIFFUSE_TIMING_CACHE=1 and
// their own DIFFUSE_CACHE_DIR.
#include <cstdlib>

namespace {

const bool timing_cache_off = [] {
  setenv("DIFFUSE_TIMING_CACHE", "0", /*overwrite=*/0);
  return true;
}();

}  // namespace
