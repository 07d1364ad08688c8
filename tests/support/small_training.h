// A few training steps of a tiny model, as the training and conditioning tests run them, and the
// losses its log.csv recorded.
#pragma once

#include <fstream>
#include <string>
#include <vector>

#include "diffuse/train/trainer.h"

namespace diffuse::testing {

// 60 steps of 32 images at lr 2e-3 (warm-up 5), a log row every 10 steps, no checkpoints before
// the end, previews of 4 images, no progress bar.
inline TrainConfig small_training(const std::string& out_dir) {
  TrainConfig config;
  config.out_dir = out_dir;
  config.steps = 60;
  config.batch_size = 32;
  config.lr = 2e-3;
  config.warmup = 5;
  config.log_every = 10;
  config.checkpoint_every = 0;
  config.preview_n = 4;
  config.progress = false;
  return config;
}

// The "tiny" network for data d, T = 100.
inline CheckpointInfo tiny_info(const Dataset& d) {
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", d.channels(), d.image_size());
  info.schedule.timesteps = 100;
  info.data = DataInfo{d.name, d.channels(), d.image_size(), d.num_classes};
  return info;
}

// `steps` steps of 8 images (warm-up 2, so that a run of 3 steps and the first 3 of a longer one
// see the same learning rates), a log row every 2 steps, seed 3, nothing written before the end.
inline TrainConfig quick_config(const std::string& dir, int64_t steps) {
  TrainConfig c;
  c.out_dir = dir;
  c.steps = steps;
  c.batch_size = 8;
  c.warmup = 2;
  c.checkpoint_every = 0;
  c.preview_every = 0;
  c.preview_n = 4;
  c.log_every = 2;
  c.progress = false;
  c.seed = 3;
  return c;
}

// The loss column of a run's log.csv, row by row.
inline std::vector<double> logged_losses(const std::string& out_dir) {
  std::ifstream log(out_dir + "/log.csv");
  std::string line;
  std::vector<double> losses;
  std::getline(log, line);  // the header
  while (std::getline(log, line)) losses.push_back(std::stod(line.substr(line.find(',') + 1)));
  return losses;
}

}  // namespace diffuse::testing
