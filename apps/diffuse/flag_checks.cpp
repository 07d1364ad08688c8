// Validators of numeric flags, with messages that name the rule and the value given.
#include <cmath>
#include <string>

#include "commands.h"
#include "diffuse/train/power_ema.h"

namespace diffuse::cli {

namespace {

// A validator that accepts a finite number satisfying `ok`, else says "must be RULE, got TEXT".
CLI::Validator finite_number_that(const std::string& rule, bool (*ok)(double)) {
  return CLI::Validator(
      [rule, ok](std::string& text) -> std::string {
        double value = 0.0;
        if (!CLI::detail::lexical_cast(text, value) || !std::isfinite(value) || !ok(value)) {
          return "must be " + rule + ", got '" + text + "'";
        }
        return {};
      },
      rule);
}

}  // namespace

const CLI::Validator& positive_number() {
  static const CLI::Validator check = finite_number_that("a positive number", [](double v) { return v > 0.0; });
  return check;
}

const CLI::Validator& non_negative_number() {
  static const CLI::Validator check = finite_number_that("a number >= 0", [](double v) { return v >= 0.0; });
  return check;
}

const CLI::Validator& unit_interval() {
  static const CLI::Validator check =
      finite_number_that("a number in [0, 1]", [](double v) { return v >= 0.0 && v <= 1.0; });
  return check;
}

const CLI::Validator& half_open_unit_interval() {
  static const CLI::Validator check =
      finite_number_that("a number in [0, 1)", [](double v) { return v >= 0.0 && v < 1.0; });
  return check;
}

const CLI::Validator& ema_sigma_rel_range() {
  static const CLI::Validator check =
      finite_number_that("a number in (0, " + std::to_string(power_ema_max_sigma_rel()).substr(0, 6) + "]",
                         [](double v) { return is_power_ema_sigma_rel(v); });
  return check;
}

const CLI::Validator& ema_sigma_rel_or_off() {
  static const CLI::Validator check =
      finite_number_that("0 (off) or a number in (0, " + std::to_string(power_ema_max_sigma_rel()).substr(0, 6) + "]",
                         [](double v) { return v == 0.0 || is_power_ema_sigma_rel(v); });
  return check;
}

const CLI::Validator& eta_range() {
  // σ_t grows with η past DDPM's at η = 1 until the direction term √(1 − ᾱ_prev − σ²) vanishes
  return unit_interval();
}

const CLI::Validator& guidance_range() {
  static const CLI::Validator check =
      finite_number_that("a number in [0, 100]", [](double v) { return v >= 0.0 && v <= 100.0; });
  return check;
}

}  // namespace diffuse::cli
