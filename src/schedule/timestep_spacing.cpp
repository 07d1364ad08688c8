#include "diffuse/schedule/timestep_spacing.h"

#include <algorithm>
#include <cfenv>
#include <cmath>
#include <stdexcept>

namespace diffuse {

std::string to_string(TimestepSpacing spacing) {
  switch (spacing) {
    case TimestepSpacing::leading: return "leading";
    case TimestepSpacing::trailing: return "trailing";
    case TimestepSpacing::linspace: return "linspace";
    case TimestepSpacing::quadratic: return "quadratic";
  }
  return "?";
}

namespace {
constexpr TimestepSpacing kSpacings[] = {TimestepSpacing::leading, TimestepSpacing::trailing, TimestepSpacing::linspace,
                                         TimestepSpacing::quadratic};
}  // namespace

std::vector<std::string> timestep_spacing_names() {
  std::vector<std::string> names;
  for (auto spacing : kSpacings) names.push_back(to_string(spacing));
  return names;
}

TimestepSpacing timestep_spacing_from_string(const std::string& name) {
  std::string expected;
  for (auto spacing : kSpacings) {
    if (name == to_string(spacing)) return spacing;
    expected += (expected.empty() ? "" : ", ") + to_string(spacing);
  }
  throw std::invalid_argument("unknown timestep spacing '" + name + "' (one of " + expected + ")");
}

namespace {
// numpy.round: round half to even (std::nearbyint under the default rounding mode).
int64_t round_half_even(double x) {
  const int previous = std::fegetround();
  std::fesetround(FE_TONEAREST);
  const double r = std::nearbyint(x);
  std::fesetround(previous);
  return static_cast<int64_t>(r);
}
}  // namespace

std::vector<int64_t> spaced_timesteps(int64_t T, int64_t S, TimestepSpacing spacing) {
  if (S < 1 || S > T) {
    throw std::invalid_argument("sampler steps must be in [1, " + std::to_string(T) + "], got " +
                                std::to_string(S));
  }
  std::vector<int64_t> out;
  out.reserve(S);
  switch (spacing) {
    case TimestepSpacing::leading: {
      const int64_t k = T / S;
      for (int64_t j = S - 1; j >= 0; --j) out.push_back(j * k);
      break;
    }
    case TimestepSpacing::trailing: {
      const double r = static_cast<double>(T) / static_cast<double>(S);
      for (int64_t j = 0; j < S; ++j) out.push_back(round_half_even(static_cast<double>(T) - j * r) - 1);
      break;
    }
    case TimestepSpacing::linspace: {
      // numpy: step = (T − 1)/(S − 1); value_j = j·step; the last value is exactly T − 1.
      const double step = S == 1 ? 0.0 : static_cast<double>(T - 1) / static_cast<double>(S - 1);
      for (int64_t j = S - 1; j >= 0; --j) {
        const double v = (j == S - 1 && S > 1) ? static_cast<double>(T - 1) : static_cast<double>(j) * step;
        out.push_back(round_half_even(v));
      }
      break;
    }
    case TimestepSpacing::quadratic: {
      // numpy: (linspace(0, √(0.8T), S)**2).astype(int); the first few repeat at S ≳ √(0.8T).
      const double end = std::sqrt(0.8 * static_cast<double>(T));
      const double step = S == 1 ? 0.0 : end / static_cast<double>(S - 1);
      std::vector<int64_t> ascending;
      for (int64_t j = 0; j < S; ++j) {
        const double v = (j == S - 1 && S > 1) ? end : static_cast<double>(j) * step;
        const auto i = static_cast<int64_t>(std::floor(v * v));
        ascending.push_back(ascending.empty() ? i : std::max(i, ascending.back() + 1));
      }
      out.assign(ascending.rbegin(), ascending.rend());
      break;
    }
  }
  return out;
}

}  // namespace diffuse
