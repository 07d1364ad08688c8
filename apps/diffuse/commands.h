// The `diffuse` subcommands: each file adds one to the CLI11 app and runs it from its callback.
#pragma once

#include <CLI/CLI.hpp>

#include <torch/torch.h>

#include <string>

namespace diffuse::cli {

void add_train_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_schedule_command(CLI::App& app);
void add_eval_command(CLI::App& app);

// --device cpu|cuda, checked against what this build and machine have.
void add_device_option(CLI::App& cmd, std::string& device);
torch::Device resolve_device(const std::string& name);

}  // namespace diffuse::cli
