#include "diffuse/util/environment.h"

#include <cstdlib>

namespace diffuse {

bool env_equals(const char* name, const std::string& value) {
  const char* v = std::getenv(name);
  return v != nullptr && value == v;
}

}  // namespace diffuse
