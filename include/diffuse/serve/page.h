// The page `diffuse serve` shows at /: src/serve/page.html, compiled into the binary (no files
// read at run time, nothing fetched from elsewhere).
#pragma once

#include <string>

namespace diffuse::serve {

const std::string& page_html();

}  // namespace diffuse::serve
