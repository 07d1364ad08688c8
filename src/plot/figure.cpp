#include "diffuse/plot/figure.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <stdexcept>

#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse_build_config.h"

#if DIFFUSE_HAVE_CAIRO
#include <cairo.h>
#endif

namespace diffuse {

bool figures_have_text() { return DIFFUSE_HAVE_CAIRO != 0; }

#if DIFFUSE_HAVE_CAIRO
namespace {

using Surface = std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)>;
using Context = std::unique_ptr<cairo_t, decltype(&cairo_destroy)>;

void write_surface_png(const std::string& path, cairo_surface_t* surface) {
  std::string bytes;
  auto append = [](void* closure, const unsigned char* data, unsigned int length) {
    static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
    return CAIRO_STATUS_SUCCESS;
  };
  if (cairo_surface_write_to_png_stream(surface, append, &bytes) != CAIRO_STATUS_SUCCESS) {
    throw std::runtime_error("cannot encode figure '" + path + "'");
  }
  write_file_atomic(path, bytes);
}

// Distinguishable colours (Okabe–Ito), readable for colour-blind viewers.
const double kColours[][3] = {{0.0, 0.45, 0.70}, {0.84, 0.37, 0.0}, {0.0, 0.62, 0.45},
                              {0.80, 0.47, 0.65}, {0.34, 0.71, 0.91}, {0.90, 0.62, 0.0}};

std::string tick_label(double v, bool log_scale) {
  char buf[32];
  if (log_scale) {
    std::snprintf(buf, sizeof buf, "1e%d", static_cast<int>(std::lround(std::log10(v))));
  } else {
    std::snprintf(buf, sizeof buf, "%g", std::abs(v) < 1e-12 ? 0.0 : v);
  }
  return buf;
}

void text_at(cairo_t* cr, const std::string& s, double x, double y, double align_x, double align_y) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  cairo_move_to(cr, x - align_x * e.width - e.x_bearing, y - align_y * e.height - e.y_bearing);
  cairo_show_text(cr, s.c_str());
}

void draw_panel(cairo_t* cr, const LinePlot& plot, double ox, double oy, double w, double h) {
  const double left = ox + 70, right = ox + w - 20, top = oy + 40, bottom = oy + h - 50;
  auto tr = [&](double v) { return plot.log_y ? std::log10(v) : v; };
  double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
  for (const auto& s : plot.series) {
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (plot.log_y && !(s.y[i] > 0)) continue;
      x_lo = std::min(x_lo, s.x[i]);
      x_hi = std::max(x_hi, s.x[i]);
      y_lo = std::min(y_lo, tr(s.y[i]));
      y_hi = std::max(y_hi, tr(s.y[i]));
    }
  }
  if (!(x_hi > x_lo)) x_hi = x_lo + 1;
  if (!(y_hi > y_lo)) y_hi = y_lo + 1;
  if (plot.log_y) {
    y_lo = std::floor(y_lo);
    y_hi = std::ceil(y_hi);
  } else {
    const double pad = 0.04 * (y_hi - y_lo);
    y_lo -= pad;
    y_hi += pad;
  }
  auto px = [&](double x) { return left + (x - x_lo) / (x_hi - x_lo) * (right - left); };
  auto py = [&](double y) { return bottom - (tr(y) - y_lo) / (y_hi - y_lo) * (bottom - top); };

  // axes, ticks and grid
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1.0);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_stroke(cr);
  cairo_set_font_size(cr, 12);
  for (double xt : axis_ticks(x_lo, x_hi, false)) {
    cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
    cairo_move_to(cr, px(xt), top);
    cairo_line_to(cr, px(xt), bottom);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, tick_label(xt, false), px(xt), bottom + 6, 0.5, 0.0);
  }
  const double y_lo_value = plot.log_y ? std::pow(10.0, y_lo) : y_lo, y_hi_value = plot.log_y ? std::pow(10.0, y_hi) : y_hi;
  for (double yt : axis_ticks(y_lo_value, y_hi_value, plot.log_y)) {
    cairo_set_source_rgb(cr, 0.88, 0.88, 0.88);
    cairo_move_to(cr, left, py(yt));
    cairo_line_to(cr, right, py(yt));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, tick_label(yt, plot.log_y), left - 6, py(yt), 1.0, 0.5);
  }
  cairo_set_font_size(cr, 14);
  text_at(cr, plot.title, (left + right) / 2, oy + 12, 0.5, 0.0);
  cairo_set_font_size(cr, 13);
  text_at(cr, plot.x_label, (left + right) / 2, oy + h - 8, 0.5, 1.0);
  cairo_save(cr);
  cairo_translate(cr, ox + 14, (top + bottom) / 2);
  cairo_rotate(cr, -M_PI / 2);
  text_at(cr, plot.y_label, 0, 0, 0.5, 0.5);
  cairo_restore(cr);

  // the series, clipped to the frame, and a legend
  cairo_save(cr);
  cairo_rectangle(cr, left, top, right - left, bottom - top);
  cairo_clip(cr);
  cairo_set_line_width(cr, 2.0);
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const auto* c = kColours[k % 6];
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    bool pen_down = false;
    const auto& s = plot.series[k];
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (plot.log_y && !(s.y[i] > 0)) {
        pen_down = false;
        continue;
      }
      if (pen_down) cairo_line_to(cr, px(s.x[i]), py(s.y[i]));
      else cairo_move_to(cr, px(s.x[i]), py(s.y[i]));
      pen_down = true;
    }
    cairo_stroke(cr);
  }
  cairo_restore(cr);
  cairo_set_font_size(cr, 12);
  for (size_t k = 0; k < plot.series.size(); ++k) {
    const auto* c = kColours[k % 6];
    const double ly = top + 14 + 16 * static_cast<double>(k);
    cairo_set_source_rgb(cr, c[0], c[1], c[2]);
    cairo_rectangle(cr, right - 150, ly - 5, 18, 4);
    cairo_fill(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    text_at(cr, plot.series[k].label, right - 126, ly - 3, 0.0, 0.5);
  }
}

}  // namespace

#endif  // DIFFUSE_HAVE_CAIRO

std::vector<double> axis_ticks(double lo, double hi, bool log_scale) {
  std::vector<double> ticks;
  if (!(hi > lo)) return {lo};
  if (log_scale) {
    const int a = static_cast<int>(std::ceil(std::log10(lo) - 1e-9)), b = static_cast<int>(std::floor(std::log10(hi) + 1e-9));
    const int stride = std::max(1, (b - a) / 6 + 1);  // at most ~7 labels
    for (int k = a; k <= b; k += stride) ticks.push_back(std::pow(10.0, k));
    return ticks;
  }
  const double raw = (hi - lo) / 6.0, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  double step = magnitude;
  for (double m : {1.0, 2.0, 5.0, 10.0}) {
    step = m * magnitude;
    if (step >= raw) break;
  }
  for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + 1e-9 * step; v += step) ticks.push_back(v);
  return ticks;
}

#if DIFFUSE_HAVE_CAIRO
void save_line_plots(const std::string& path, const std::vector<LinePlot>& panels, int columns) {
  if (panels.empty()) throw std::invalid_argument("save_line_plots: nothing to plot");
  const int cols = std::max(1, std::min<int>(columns, static_cast<int>(panels.size())));
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  const double W = 480, H = 360;
  Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(W) * cols, static_cast<int>(H) * rows),
                  cairo_surface_destroy);
  Context cr(cairo_create(surface.get()), cairo_destroy);
  cairo_set_source_rgb(cr.get(), 1, 1, 1);
  cairo_paint(cr.get());
  cairo_select_font_face(cr.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  for (size_t i = 0; i < panels.size(); ++i) {
    draw_panel(cr.get(), panels[i], W * static_cast<double>(i % cols), H * static_cast<double>(i / cols), W, H);
  }
  cairo_surface_flush(surface.get());
  write_surface_png(path, surface.get());
}

namespace {

// The width of the widest label in the grids' font, measured on a scratch surface.
double widest_label(const std::vector<std::string>& labels) {
  Surface scratch(cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1), cairo_surface_destroy);
  Context cr(cairo_create(scratch.get()), cairo_destroy);
  cairo_select_font_face(cr.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr.get(), 13);
  double widest = 0.0;
  for (const auto& s : labels) {
    cairo_text_extents_t e;
    cairo_text_extents(cr.get(), s.c_str(), &e);
    widest = std::max(widest, e.width);
  }
  return widest;
}

}  // namespace

void save_labelled_grid(const std::string& path, const torch::Tensor& images, int64_t columns,
                        const std::vector<std::string>& column_labels, const std::vector<std::string>& row_labels,
                        int scale) {
  TORCH_CHECK(images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3), "save_labelled_grid: expected [N, 1|3, H, W]");
  TORCH_CHECK(columns > 0 && scale > 0, "save_labelled_grid: columns and scale must be positive");
  const int64_t n = images.size(0), rows = (n + columns - 1) / columns;
  const int64_t h = images.size(2) * scale, w = images.size(3) * scale, gap = 4;
  const int64_t head = column_labels.empty() ? gap : 24;
  // row labels right-aligned 8 px before the images, at least 70 px given to them
  const int64_t side = row_labels.empty() ? gap : std::max<int64_t>(70, static_cast<int64_t>(widest_label(row_labels)) + 16);
  const int64_t W = side + columns * (w + gap), H = head + rows * (h + gap);
  Surface surface(cairo_image_surface_create(CAIRO_FORMAT_RGB24, static_cast<int>(W), static_cast<int>(H)), cairo_surface_destroy);
  // Pixels first: uint8 [N, H, W, 3] written straight into the surface's xRGB words.
  auto u8 = to_uint8(images).expand({n, 3, images.size(2), images.size(3)});
  u8 = torch::upsample_nearest2d(u8.to(torch::kFloat), {h, w}).to(torch::kUInt8).permute({0, 2, 3, 1}).contiguous();
  cairo_surface_flush(surface.get());
  unsigned char* data = cairo_image_surface_get_data(surface.get());
  const int stride = cairo_image_surface_get_stride(surface.get());
  std::fill(data, data + stride * H, static_cast<unsigned char>(255));
  const auto* px = u8.data_ptr<uint8_t>();
  for (int64_t k = 0; k < n; ++k) {
    const int64_t x0 = side + (k % columns) * (w + gap), y0 = head + (k / columns) * (h + gap);
    for (int64_t y = 0; y < h; ++y) {
      auto* row = reinterpret_cast<uint32_t*>(data + (y0 + y) * stride) + x0;
      const auto* src = px + ((k * h + y) * w) * 3;
      for (int64_t x = 0; x < w; ++x) row[x] = (uint32_t{src[3 * x]} << 16) | (uint32_t{src[3 * x + 1]} << 8) | src[3 * x + 2];
    }
  }
  cairo_surface_mark_dirty(surface.get());
  Context cr(cairo_create(surface.get()), cairo_destroy);
  cairo_select_font_face(cr.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr.get(), 13);
  cairo_set_source_rgb(cr.get(), 0, 0, 0);
  for (size_t c = 0; c < column_labels.size() && static_cast<int64_t>(c) < columns; ++c) {
    text_at(cr.get(), column_labels[c], side + static_cast<double>(c) * (w + gap) + w / 2.0, head / 2.0, 0.5, 0.5);
  }
  for (size_t r = 0; r < row_labels.size() && static_cast<int64_t>(r) < rows; ++r) {
    text_at(cr.get(), row_labels[r], side - 8, head + static_cast<double>(r) * (h + gap) + h / 2.0, 1.0, 0.5);
  }
  cairo_surface_flush(surface.get());
  write_surface_png(path, surface.get());
}

#else  // no cairo: grids without headings, no line plots

void save_line_plots(const std::string& path, const std::vector<LinePlot>& panels, int columns) {
  if (panels.empty()) throw std::invalid_argument("save_line_plots: nothing to plot");
  throw std::runtime_error("cannot draw '" + path + "': this build of diffuse has no cairo (install libcairo2-dev and rebuild)");
}

void save_labelled_grid(const std::string& path, const torch::Tensor& images, int64_t columns,
                        const std::vector<std::string>&, const std::vector<std::string>&, int scale) {
  TORCH_CHECK(images.dim() == 4 && (images.size(1) == 1 || images.size(1) == 3), "save_labelled_grid: expected [N, 1|3, H, W]");
  TORCH_CHECK(columns > 0 && scale > 0, "save_labelled_grid: columns and scale must be positive");
  auto big = torch::upsample_nearest2d(images.to(torch::kFloat), {images.size(2) * scale, images.size(3) * scale});
  save_grid_png(path, big, columns);
}

#endif  // DIFFUSE_HAVE_CAIRO

}  // namespace diffuse
