// Figures: tick placement, and PNGs of the expected size from the plot and grid writers.
#include <gtest/gtest.h>

#include <stb/stb_image.h>

#include "diffuse/plot/figure.h"
#include "support/temp_dir.h"

using namespace diffuse;

namespace {
std::pair<int, int> png_size(const std::string& path) {
  int w = 0, h = 0, c = 0;
  EXPECT_TRUE(stbi_info(path.c_str(), &w, &h, &c)) << path;
  return {w, h};
}
}  // namespace

TEST(Plot, AxisTicksAreRoundNumbersInsideTheRange) {
  EXPECT_EQ(axis_ticks(0, 1000, false), (std::vector<double>{0, 200, 400, 600, 800, 1000}));
  for (double v : axis_ticks(0.013, 0.87, false)) {
    EXPECT_GE(v, 0.013);
    EXPECT_LE(v, 0.87);
  }
  EXPECT_EQ(axis_ticks(1e-5, 1.0, true), (std::vector<double>{1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1}));
  EXPECT_LE(axis_ticks(1e-9, 1e9, true).size(), 7u);  // thinned to stay readable
}

TEST(Plot, LinePlotsAndLabelledGridsHaveTheExpectedSize) {
  if (!figures_have_text()) GTEST_SKIP() << "built without cairo";
  diffuse::testing::TempDir dir;
  LinePlot p{"title", "x", "y", true, {{"a", {1, 2, 3}, {1, 10, 100}}, {"b", {1, 2, 3}, {0, 5, 50}}}};
  save_line_plots(dir / "plot.png", {p, p, p}, 2);
  EXPECT_EQ(png_size(dir / "plot.png"), (std::pair<int, int>{960, 720}));
  save_labelled_grid(dir / "grid.png", torch::zeros({5, 1, 8, 8}), 3, {"a", "b", "c"}, {"r1", "r2"}, 2);
  // width: 70 (row labels) + 3 × (16 + 4); height: 24 (headings) + 2 × (16 + 4)
  EXPECT_EQ(png_size(dir / "grid.png"), (std::pair<int, int>{130, 64}));
  EXPECT_THROW(save_line_plots(dir / "none.png", {}), std::invalid_argument);
}
