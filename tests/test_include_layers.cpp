// The library's layers, lowest first: a file may include its own layer's headers and those of
// layers below it, never one above or beside it; the model includes runtime/ only through the
// op layer (runtime/ops.h). The order is the architecture
// (docs/ARCHITECTURE.md); a new include that breaks it fails here with the file and the line.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <string>

#include "diffuse_build_config.h"

namespace {

namespace fs = std::filesystem;

// rank: a layer may include layers of a strictly lower rank (and itself).
const std::map<std::string, int>& layer_ranks() {
  static const std::map<std::string, int> ranks{
      {"util", 0},                         // environment, progress bars
      {"io", 1},         {"schedule", 1},  // file formats (atomic writes, safetensors, PNG); β tables
      {"runtime", 2},    {"data", 2},     {"plot", 2}, {"text", 2},  // kernels; data sets; figures; tokenizer
      {"diffusion", 3},  {"model", 3},                               // the Gaussian process and its losses; the U-Net
      {"sampling", 4},                                               // samplers and the loop that drives them
      {"checkpoint", 5}, {"edit", 5},                                // a model and its process on disk; editing
      {"eval", 6},       {"train", 6},                               // likelihood and cFID; training
      {"pipeline", 7},   {"bench", 7},                               // the library's entry points; benchmarks
      {"serve", 8},                                                  // the HTTP server over the pipeline
  };
  return ranks;
}

// The layer a file under src/ or include/diffuse/ belongs to: its first directory there.
std::string layer_of(const fs::path& relative) { return relative.begin()->string(); }

struct Violation {
  std::string where, what;
};

std::vector<Violation> violations_under(const fs::path& root) {
  std::vector<Violation> found;
  const std::regex include_line(R"re(^\s*#\s*include\s*"(diffuse/([a-z_]+)/[^"]+)")re");
  for (const auto& entry : fs::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    const auto ext = entry.path().extension();
    if (ext != ".h" && ext != ".cpp" && ext != ".cu" && ext != ".cuh") continue;
    const std::string layer = layer_of(fs::relative(entry.path(), root));
    const auto own = layer_ranks().find(layer);
    if (own == layer_ranks().end()) {
      found.push_back(
          {entry.path().string(), "is in a directory that has no layer: add '" + layer + "' to layer_ranks"});
      continue;
    }
    std::ifstream in(entry.path());
    std::string line;
    for (int number = 1; std::getline(in, line); ++number) {
      std::smatch m;
      if (!std::regex_search(line, m, include_line)) continue;
      const std::string header = m[1], dep = m[2];
      if (dep == layer) continue;
      // The model reaches the kernels only through the op layer.
      if (layer == "model" && dep == "runtime" && header != "diffuse/runtime/ops.h") {
        found.push_back({entry.path().string() + ":" + std::to_string(number),
                         "model/ includes " + header + "; it reaches runtime/ only through runtime/ops.h"});
        continue;
      }
      const auto it = layer_ranks().find(dep);
      if (it == layer_ranks().end() || it->second >= own->second) {
        found.push_back({entry.path().string() + ":" + std::to_string(number),
                         "layer '" + layer + "' includes '" + dep + "', which is not below it"});
      }
    }
  }
  return found;
}

}  // namespace

TEST(IncludeLayers, EveryIncludeGoesToTheSameOrALowerLayer) {
  const fs::path source(DIFFUSE_SOURCE_DIR);
  std::vector<Violation> all;
  for (const auto& root : {source / "src", source / "include" / "diffuse"}) {
    ASSERT_TRUE(fs::is_directory(root)) << root;
    for (auto& v : violations_under(root)) all.push_back(std::move(v));
  }
  for (const auto& v : all) ADD_FAILURE() << v.where << ": " << v.what;
  EXPECT_TRUE(all.empty());
}

TEST(IncludeLayers, TheCheckCatchesAnUpwardInclude) {
  // A file of a low layer that includes a higher one, in a temporary tree: the check must see it.
  const fs::path root = fs::temp_directory_path() / ("diffuse_layers_" + std::to_string(::getpid()));
  fs::create_directories(root / "schedule");
  std::ofstream(root / "schedule" / "bad.h") << "#pragma once\n#include \"diffuse/model/unet.h\"\n";
  std::ofstream(root / "schedule" / "good.h") << "#pragma once\n#include \"diffuse/schedule/noise_schedule.h\"\n";
  fs::create_directories(root / "model");
  std::ofstream(root / "model" / "kernel.cpp")
      << "#include \"diffuse/runtime/ops.h\"\n#include \"diffuse/runtime/attention.h\"\n";
  const auto found = violations_under(root);
  fs::remove_all(root);
  ASSERT_EQ(found.size(), 2u);
  std::string where = found[0].where + " " + found[1].where;
  EXPECT_NE(where.find("bad.h:2"), std::string::npos) << where;
  EXPECT_NE(where.find("kernel.cpp:2"), std::string::npos) << where;
}
