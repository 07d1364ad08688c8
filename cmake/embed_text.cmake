# cmake -DINPUT=page.html -DOUTPUT=page.cpp -P embed_text.cmake: the file as the string that
# diffuse::serve::page_html() returns.
file(READ ${INPUT} CONTENT)
file(WRITE ${OUTPUT} "// Generated from ${INPUT} by cmake/embed_text.cmake.
#include \"diffuse/serve/page.h\"

namespace diffuse::serve {

const std::string& page_html() {
  static const std::string html = R\"diffuse_page(${CONTENT})diffuse_page\";
  return html;
}

}  // namespace diffuse::serve
")
