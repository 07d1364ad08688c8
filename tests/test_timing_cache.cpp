// The timing cache (runtime/timing_cache.h): choices kept across processes, per machine, and a
// broken file costs a warning, not a failure.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <nlohmann/json.hpp>

#include "diffuse/io/atomic_file.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/timing_cache.h"
#include "diffuse_build_config.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using diffuse::TimingCacheFile;

TEST(TimingCache, ChoicesSurviveIntoTheNextProcessOfTheSameMachine) {
  diffuse::testing::TempDir dir;
  const std::string path = dir / "sub/timings.json";  // the directory is made on the first store
  {
    TimingCacheFile cache(path, "machine A");
    EXPECT_FALSE(cache.find("shape 1").has_value());
    cache.store("shape 1", 5);
    cache.store("shape 2", 0);
    EXPECT_EQ(cache.find("shape 1"), 5);
  }
  TimingCacheFile next(path, "machine A");  // a later process
  EXPECT_EQ(next.find("shape 1"), 5);
  EXPECT_EQ(next.find("shape 2"), 0);
  EXPECT_FALSE(next.find("shape 3").has_value());
  // another machine's choices are not used, and its own go beside them (a run under
  // ONEDNN_MAX_CPU_ISA=AVX2 is another machine: it must not cost this one its choices)
  TimingCacheFile other(path, "machine B");
  EXPECT_FALSE(other.find("shape 1").has_value());
  other.store("shape 9", 1);
  const auto doc = nlohmann::json::parse(diffuse::read_file(path));
  EXPECT_EQ(doc.at("machines").at("machine B").size(), 1u);
  EXPECT_EQ(doc.at("machines").at("machine A").size(), 2u);
  TimingCacheFile again(path, "machine A");
  EXPECT_EQ(again.find("shape 1"), 5);
  EXPECT_FALSE(again.find("shape 9").has_value());
  EXPECT_EQ(TimingCacheFile(path, "machine B").find("shape 9"), 1);
}

TEST(TimingCache, TheFirstFormatIsReadAsItsMachinesChoices) {
  diffuse::testing::TempDir dir;
  const std::string path = dir / "timings.json";
  diffuse::write_file_atomic(path, R"({"machine": "m", "choices": {"a": 3}})");
  TimingCacheFile old(path, "m");
  EXPECT_EQ(old.find("a"), 3);
  EXPECT_FALSE(TimingCacheFile(path, "n").find("a").has_value());
  old.store("b", 1);  // rewritten in the present format, the old choices kept
  const auto doc = nlohmann::json::parse(diffuse::read_file(path));
  EXPECT_EQ(doc.at("machines").at("m").at("a"), 3);
  EXPECT_EQ(doc.at("machines").at("m").at("b"), 1);
}

TEST(TimingCache, TwoProcessesStoringKeepEachOthersChoices) {
  diffuse::testing::TempDir dir;
  const std::string path = dir / "timings.json";
  TimingCacheFile first(path, "m"), second(path, "m");
  EXPECT_FALSE(first.find("a").has_value());  // both have read the (missing) file
  EXPECT_FALSE(second.find("b").has_value());
  first.store("a", 1);
  second.store("b", 2);  // merges what `first` wrote since
  TimingCacheFile later(path, "m");
  EXPECT_EQ(later.find("a"), 1);
  EXPECT_EQ(later.find("b"), 2);
}

TEST(TimingCache, AnUnreadableOrUnwritableFileIsAWarningNotAFailure) {
  diffuse::testing::TempDir dir;
  const std::string path = dir / "timings.json";
  std::ofstream(path) << "{ not json";
  TimingCacheFile broken(path, "m");
  EXPECT_FALSE(broken.find("a").has_value());
  broken.store("a", 3);  // replaces the broken file
  EXPECT_EQ(TimingCacheFile(path, "m").find("a"), 3);
  // a path under a regular file cannot be written: the choice is still kept in the process
  TimingCacheFile unwritable(path + "/timings.json", "m");
  EXPECT_NO_THROW(unwritable.store("b", 1));
  EXPECT_EQ(unwritable.find("b"), 1);
}

TEST(TimingCache, TheCliKeepsItsConvolutionChoicesForTheNextRun) {
  if (!diffuse::onednn_conv_built()) GTEST_SKIP() << "built without oneDNN: no per-shape timings";
  diffuse::testing::TempDir dir;
  const std::string bench = "DIFFUSE_TIMING_CACHE=1 DIFFUSE_CACHE_DIR=" + dir.str() + " " + DIFFUSE_BINARY +
                            " --threads 1 bench --model tiny --what train --batch-size 2 --repeat 1 "
                            "--warmup 0 --conv-kernels onednn --json";
  auto r = diffuse::testing::run_command(bench);
  ASSERT_EQ(r.status, 0) << r.output;
  const auto doc = nlohmann::json::parse(diffuse::read_file(dir / "timings.json"));
  ASSERT_EQ(doc.at("machines").size(), 1u);
  const auto choices = doc.at("machines").at(diffuse::timing_machine_signature());
  ASSERT_FALSE(choices.empty());
  for (const auto& [key, value] : choices.items()) EXPECT_NE(key.find("threads1"), std::string::npos) << key;
  // The next run takes every choice from the file: changed there to 0 (direct convolutions,
  // ATen's kernels), they stay so, where a run that timed again would store its own winners.
  auto changed = doc;
  for (auto& [key, value] : changed.at("machines").at(diffuse::timing_machine_signature()).items()) value = 0;
  diffuse::write_file_atomic(dir / "timings.json", changed.dump());
  r = diffuse::testing::run_command(bench);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(diffuse::read_file(dir / "timings.json")), changed);
}

// The choices are keyed by what was timed: with DIFFUSE_OWN_WINOGRAD=1 switched on inside one
// process (bench --alternate), the own Winograd's shapes are timed for themselves, not answered
// from the choice made for oneDNN's Winograd a step earlier.
TEST(TimingCache, ASwitchFlippedInsideAProcessTimesItsOwnChoices) {
  if (!diffuse::onednn_conv_built()) GTEST_SKIP() << "no oneDNN";
  diffuse::testing::TempDir dir;
  auto r =
      diffuse::testing::run_command("DIFFUSE_TIMING_CACHE=1 DIFFUSE_CACHE_DIR=" + dir.str() + " " + DIFFUSE_BINARY +
                                    " --threads 1 bench --model mnist --what train --batch-size 2 --repeat 2 "
                                    "--warmup 0 --conv-kernels onednn --json --alternate DIFFUSE_OWN_WINOGRAD=1");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto choices =
      nlohmann::json::parse(diffuse::read_file(dir / "timings.json")).at("machines").at(diffuse::timing_machine_signature());
  std::set<std::string> onednn_shapes, own_shapes;  // the keys without the name of what was timed
  for (const auto& [key, value] : choices.items()) {
    for (const std::string timed : {"winograd-or-direct ", "own-winograd-or-direct "}) {
      if (key.rfind(timed, 0) == 0) (timed[0] == 'o' ? own_shapes : onednn_shapes).insert(key.substr(timed.size()));
    }
  }
  EXPECT_FALSE(own_shapes.empty()) << r.output;
  // where oneDNN has a Winograd kernel (AVX-512), both were timed, shape for shape
  if (!onednn_shapes.empty()) EXPECT_EQ(onednn_shapes, own_shapes);
}
