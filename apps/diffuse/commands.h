// The `diffuse` subcommands: each file adds one to the CLI11 app and runs it from its callback.
#pragma once

#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "diffuse/model/unet_shape.h"
#include "diffuse/pipeline/pipeline.h"
#include "diffuse/sampling/sampler.h"

namespace diffuse::cli {

void add_train_command(CLI::App& app);
void add_sample_command(CLI::App& app);
void add_schedule_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_edit_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_ema_command(CLI::App& app);
void add_show_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_serve_command(CLI::App& app);  // where built with cpp-httplib (DIFFUSE_HAVE_SERVE)

// Sampler flags shared by `sample` and `eval --metric fid`.
struct SamplerFlags {
  std::string sampler = "ddim";
  std::string spacing, ddpm_variance;  // empty: the checkpoint's sampling defaults
  int64_t steps = 0;  // 0: T for ddpm, 50 for ddim
  double eta = 0.0;
  bool no_clip = false;
};
void add_sampler_options(CLI::App& cmd, SamplerFlags& flags);
// The sampler configuration of the flags, the checkpoint's defaults where a flag is not given
// (throws on --eta with a sampler other than ddim).
SamplerConfig sampler_config_of(const SamplerFlags& flags, const SamplingDefaults& defaults);
// Whether x̂_0 is clipped: the checkpoint's default unless --no-clip.
bool clip_x0_of(const SamplerFlags& flags, const SamplingDefaults& defaults);
// The sampler and its step count for the pipeline's diffusion of T steps; throws if --steps exceeds T.
std::unique_ptr<Sampler> make_sampler_from_flags(const SamplerFlags& flags, const Pipeline& pipeline, int64_t& steps);

// A file the command will write (--out, --trajectory): its directory must exist and be writable,
// checked when the flags are read, so that a mistyped path fails at once and not after minutes of
// sampling (the file itself is written through a temporary beside it, io/atomic_file.h).
const CLI::Validator& writable_output_file();

// Numeric flags: finite and > 0, or finite and ≥ 0. CLI11's PositiveNumber and NonNegativeNumber
// let NaN through and name their bounds as 309-digit numbers.
const CLI::Validator& positive_number();
const CLI::Validator& non_negative_number();
// A probability or a decay in [0, 1] (CLI::Range lets NaN through).
const CLI::Validator& unit_interval();
const CLI::Validator& half_open_unit_interval();  // [0, 1)
const CLI::Validator& ema_sigma_rel_range();      // a power-function EMA's σ_rel: (0, √(1/12)]
const CLI::Validator& ema_sigma_rel_or_off();     // 0 or that
// DDIM's η in [0, 1] and the guidance weight w in [0, 100]: far outside, the samples become NaN.
const CLI::Validator& eta_range();
const CLI::Validator& guidance_range();

// "FLAG: did you mean --NAME?" lines for the mistyped flags among `unexpected`, from the flags of
// the subcommand being parsed (empty where none is close).
std::string did_you_mean(const CLI::App& app, const std::vector<std::string>& unexpected);

// --device cpu|cuda.
void add_device_option(CLI::App& cmd, std::string& device);

// --device, --precision fp32|bf16|auto, --memory-format nchw|channels-last|auto,
// --conv-kernels aten|onednn|auto and --attention math|onednn|fused|auto: the library's
// ComputeRequest (pipeline/compute.h), and --no-cuda-graph for the inference commands.
struct ComputeFlags {
  std::string device = "cpu", precision = "fp32", memory_format = "auto", conv_kernels = "auto", attention = "auto";
  bool no_cuda_graph = false;
};
void add_compute_options(CLI::App& cmd, ComputeFlags& flags);
void add_cuda_graph_option(CLI::App& cmd, ComputeFlags& flags);
// --channels, --channel-mult, --res-blocks, --attention-res: the network's shape beside --model.
void add_model_shape_options(CLI::App& cmd, UNetShape& shape);
// resolve_compute of the flags, each choice said on stderr.
Compute resolve_compute(const ComputeFlags& flags, Workload workload);

}  // namespace diffuse::cli
