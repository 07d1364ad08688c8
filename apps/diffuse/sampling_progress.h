// The progress of generating n images in batches: the sampler's steps, batch after batch
// ("ddim-50 [#####...] 75/100 ... batch 2 of 2"), not images × steps.
#pragma once

#include <algorithm>
#include <string>

#include "diffuse/sampling/sample_loop.h"
#include "diffuse/util/progress.h"

namespace diffuse::cli {

class SamplingProgress {
 public:
  SamplingProgress(const std::string& label, int64_t n, int64_t batch_size, int64_t steps, bool enabled)
      : batch_size_(std::max<int64_t>(batch_size, 1)),
        batches_((n + batch_size_ - 1) / batch_size_),
        steps_(steps),
        bar_(label, batches_ * steps, 0, enabled) {}

  // After step s of the batch whose first image is `first_image`.
  void update(int64_t first_image, const SampleStep& s) {
    const int64_t batch = first_image / batch_size_;
    bar_.update(batch * steps_ + s.index + 1,
                batches_ > 1 ? "batch " + std::to_string(batch + 1) + " of " + std::to_string(batches_) : "");
  }
  void finish() { bar_.finish(); }

 private:
  int64_t batch_size_, batches_, steps_;
  ProgressBar bar_;
};

}  // namespace diffuse::cli
