// The process's one oneDNN CPU engine, shared by onednn_conv.cpp and onednn_matmul.cpp (include
// only where DIFFUSE_HAVE_ONEDNN).
#pragma once

#include <oneapi/dnnl/dnnl.hpp>

namespace diffuse::onednn {

inline dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

}  // namespace diffuse::onednn
