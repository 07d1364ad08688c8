// Every file of tests/data/fuzz/<target>/ (the seeds, and the inputs that once made a target crash)
// through its fuzz target (fuzz/fuzz_targets.h): each must return normally.
#include <gtest/gtest.h>

#include <filesystem>

#include "diffuse/io/atomic_file.h"
#include "diffuse_build_config.h"
#include "fuzz_targets.h"

namespace fs = std::filesystem;

class FuzzCorpus : public ::testing::TestWithParam<diffuse::fuzz::NamedTarget> {};

TEST_P(FuzzCorpus, EveryInputReturnsNormally) {
  const fs::path dir = fs::path(DIFFUSE_SOURCE_DIR) / "tests/data/fuzz" / GetParam().name;
  int inputs = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string bytes = diffuse::read_file(entry.path().string());
    SCOPED_TRACE(entry.path().string());
    EXPECT_EQ(GetParam().run(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), 0);
    ++inputs;
  }
  EXPECT_GT(inputs, 0) << "no seeds in " << dir;
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus, ::testing::ValuesIn(diffuse::fuzz::targets()),
                         [](const auto& info) { return std::string(info.param.name); });
