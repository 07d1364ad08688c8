// Sixteen images from a diffuse checkpoint with DDIM-50, written as a PNG grid: the library's
// entry points (diffuse/pipeline/pipeline.h) without the command line.
//   diffuse_generate CHECKPOINT OUT.png [SEED]
#include <cstdio>
#include <exception>
#include <string>

#include "diffuse/io/image.h"
#include "diffuse/pipeline/pipeline.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT OUT.png [SEED]\n", argv[0]);
    return 2;
  }
  try {
    const auto pipeline = diffuse::load_pipeline(argv[1]);  // CPU, float32
    diffuse::GenerateOptions options;                       // DDIM, η = 0, 50 steps
    options.n = 16;
    options.seed = argc > 3 ? std::stoull(argv[3]) : 0;
    int64_t last_step = -1;
    const auto images = diffuse::generate(pipeline, options, [&](int64_t, const diffuse::SampleStep& step) {
      if (step.index != last_step && step.index % 10 == 0) std::fprintf(stderr, "step %lld of %lld, t = %lld\n",
                                                                       static_cast<long long>(step.index),
                                                                       static_cast<long long>(step.steps),
                                                                       static_cast<long long>(step.t));
      last_step = step.index;
    });
    diffuse::save_grid_png(argv[2], images);
    std::printf("wrote %s: %lld images of %lldx%lld\n", argv[2], static_cast<long long>(images.size(0)),
                static_cast<long long>(images.size(2)), static_cast<long long>(images.size(3)));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
