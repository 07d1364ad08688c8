// Figures drawn by the project with cairo: line plots with labelled axes, and image grids with
// row and column headings. Both are written as PNG, atomically.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace diffuse {

struct Series {
  std::string label;
  std::vector<double> x, y;
};

struct LinePlot {
  std::string title, x_label, y_label;
  bool log_y = false;  // logarithmic y axis (values ≤ 0 are skipped)
  std::vector<Series> series;
};

// Panels side by side, `columns` per row; each panel 480×360 pixels.
void save_line_plots(const std::string& path, const std::vector<LinePlot>& panels, int columns = 2);

// images [N, C, H, W] in [−1, 1], laid out `columns` per row, each magnified `scale`× (nearest);
// optional headings above the columns and left of the rows.
void save_labelled_grid(const std::string& path, const torch::Tensor& images, int64_t columns,
                        const std::vector<std::string>& column_labels, const std::vector<std::string>& row_labels,
                        int scale = 3);

// False in a build without cairo: then grids carry no headings and save_line_plots throws.
bool figures_have_text();

// "Nice" axis ticks for [lo, hi]: 1, 2 or 5 × 10^k steps (linear) or powers of ten (log).
std::vector<double> axis_ticks(double lo, double hi, bool log_scale);

}  // namespace diffuse
