// The message of the std::exception a callable throws ("" if it throws none).
#pragma once

#include <exception>
#include <string>

namespace diffuse::testing {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

}  // namespace diffuse::testing
