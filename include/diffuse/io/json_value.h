// Typed reads of JSON values from files. nlohmann's get<T>() converts what it is given: 1.5 → 1
// silently, and 3e29 → int64 with undefined behaviour. These accept only a value of the right kind
// and throw naming `where` otherwise.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace diffuse {

template <class T>
T json_value(const nlohmann::json& v, const std::string& where) {
  auto refuse = [&](const char* expected) {
    throw std::runtime_error(where + ": expected " + expected + ", got " + v.dump());
  };
  if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) refuse("true or false");
  } else if constexpr (std::is_integral_v<T>) {
    if (!v.is_number_integer()) refuse("an integer");
    if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) refuse("an integer");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!v.is_number() || !std::isfinite(v.get<double>())) refuse("a finite number");
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!v.is_string()) refuse("a string");
  } else {  // std::vector of one of the above
    if (!v.is_array()) refuse("a list");
    T out;
    for (const auto& item : v) out.push_back(json_value<typename T::value_type>(item, where));
    return out;
  }
  return v.get<T>();
}

// The field `key` of object `j`: absent is an error naming it.
template <class T>
T json_field(const nlohmann::json& j, const std::string& key, const std::string& what) {
  if (!j.is_object() || !j.contains(key)) throw std::runtime_error(what + ": missing field '" + key + "'");
  return json_value<T>(j.at(key), what + " field '" + key + "'");
}

}  // namespace diffuse
