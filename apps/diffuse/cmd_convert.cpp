// diffuse convert: a checkpoint (or a diffusers folder) to a diffuse checkpoint or a diffusers pipeline folder.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "commands.h"
#include "diffuse/checkpoint/diffusers.h"

namespace diffuse::cli {

namespace {

struct ConvertOptions {
  std::string checkpoint, out, format = "diffusers";
};

void run_convert(const ConvertOptions& o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(o.out, ec) && fs::equivalent(o.checkpoint, o.out, ec)) {
    throw std::runtime_error("--out " + o.out + " is the input itself");
  }
  const auto loaded = load_checkpoint(o.checkpoint, torch::kCPU);
  const auto& c = loaded.info.model;
  if (o.format == "diffusers") {
    if (fs::exists(o.out) && !fs::is_directory(o.out)) {
      throw std::runtime_error("--out " + o.out + ": a diffusers pipeline is a folder, and this is a file");
    }
    save_diffusers(o.out, loaded.model, loaded.info);
  } else {
    if (fs::is_directory(o.out)) throw std::runtime_error("--out " + o.out + ": a diffuse checkpoint is a file");
    save_checkpoint(o.out, loaded.model, loaded.info);
  }
  std::fprintf(stderr, "wrote %s (%s; %lld parameters, %lldx%lldx%lld, %lld levels, T = %lld, %s%s)\n", o.out.c_str(),
               o.format.c_str(), static_cast<long long>(loaded.model->parameter_count()),
               static_cast<long long>(c.in_channels), static_cast<long long>(c.image_size),
               static_cast<long long>(c.image_size), static_cast<long long>(c.levels()),
               static_cast<long long>(loaded.info.schedule.timesteps), to_string(loaded.info.objective).c_str(),
               c.num_classes > 0 ? (", " + std::to_string(c.num_classes) + " classes").c_str() : "");
}

}  // namespace

void add_convert_command(CLI::App& app) {
  auto o = std::make_shared<ConvertOptions>();
  auto* cmd = app.add_subcommand("convert", "Convert between diffuse checkpoints and diffusers' format");
  cmd->add_option("--checkpoint", o->checkpoint, "checkpoint.safetensors, or a diffusers folder (pipeline or unet/)")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--out", o->out, "Output: a .safetensors file (diffuse) or a folder (diffusers)")->required();
  cmd->add_option("--format", o->format, "Output format")
      ->check(CLI::IsMember({"diffuse", "diffusers"}))
      ->capture_default_str();
  cmd->callback([o] { run_convert(*o); });
}

}  // namespace diffuse::cli
