// diffuse: denoising diffusion models (DDPM, DDIM) from the command line.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>

#include "commands.h"
#include "diffuse/runtime/device.h"
#include "diffuse/runtime/large_block_cache.h"
#include "diffuse/runtime/settings.h"
#include "diffuse/util/cpu_sharing.h"

namespace diffuse::cli {

const CLI::Validator& writable_output_file() {
  static const CLI::Validator check(
      [](std::string& path) -> std::string {
        const auto parent = std::filesystem::path(path).parent_path();
        const auto dir = parent.empty() ? std::filesystem::path(".") : parent;
        std::error_code error;
        if (!std::filesystem::is_directory(dir, error)) return "no directory '" + dir.string() + "' to write " + path + " in";
        if (::access(dir.c_str(), W_OK) != 0) return "cannot write in '" + dir.string() + "' (" + path + ")";
        if (std::filesystem::path(path).extension() != ".png")
          return path + ": images are written as PNG (name it .png)";
        return {};
      },
      "FILE", "writable output file");
  return check;
}

void add_device_option(CLI::App& cmd, std::string& device) {
  cmd.add_option("--device", device, "Where to compute")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
}

void add_compute_options(CLI::App& cmd, ComputeFlags& flags) {
  add_device_option(cmd, flags.device);
  cmd.add_option("--precision", flags.precision,
                 "fp32, or bf16 mixed precision (float32 weights, bf16 convolutions); auto: bf16 where this device runs it "
                 "natively and faster")
      ->check(CLI::IsMember({"fp32", "bf16", "auto"}))
      ->capture_default_str();
  cmd.add_option("--memory-format", flags.memory_format,
                 "Activation layout: nchw or channels-last (NHWC); auto: channels-last for inference on a GPU (with "
                 "the own GroupNorm kernel), else nchw")
      ->check(CLI::IsMember({"nchw", "channels-last", "auto"}))
      ->capture_default_str();
  cmd.add_option("--conv-kernels", flags.conv_kernels,
                 "float32 convolutions on the CPU: aten (LibTorch's), onednn (oneDNN's, Winograd or direct timed per "
                 "shape; the U-Net's activations stay channel-blocked where every width is a multiple of 16); "
                 "auto: onednn where oneDNN has Winograd for this CPU")
      ->check(CLI::IsMember({"aten", "onednn", "auto"}))
      ->capture_default_str();
  cmd.add_option("--attention", flags.attention,
                 "Self-attention: math (QᵀK, softmax, V·Wᵀ by torch::matmul), onednn (the same, the products by "
                 "oneDNN's batched matmul; float32 on the CPU), fused (scaled_dot_product_attention, LibTorch >= 2.0); "
                 "auto: onednn for float32 runs on the CPU where built, else math")
      ->check(CLI::IsMember({"math", "onednn", "fused", "auto"}))
      ->capture_default_str();
}

void add_model_shape_options(CLI::App& cmd, UNetShape& shape) {
  cmd.add_option("--channels", shape.channels, "Base width of the network (default: --model's)")
      ->check(CLI::Range(int64_t{2}, int64_t{1024}));
  cmd.add_option("--channel-mult", shape.channel_mult, "Width of each level as a multiple of --channels, e.g. 1,2,2")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{1}, int64_t{16}));
  cmd.add_option("--res-blocks", shape.num_res_blocks, "Residual blocks per level on the way down")
      ->check(CLI::Range(int64_t{1}, int64_t{16}));
  cmd.add_option("--attention-res", shape.attention_resolutions,
                 "Spatial sizes whose blocks get self-attention, e.g. 14,7 (0: none beside the middle block's)")
      ->delimiter(',')
      ->check(CLI::Range(int64_t{0}, int64_t{1024}));
}

void add_cuda_graph_option(CLI::App& cmd, ComputeFlags& flags) {
  cmd.add_flag("--no-cuda-graph", flags.no_cuda_graph,
               "On a GPU, run the network's calls eagerly instead of replaying each from a CUDA graph");
}

Compute resolve_compute(const ComputeFlags& flags, Workload workload) {
  ComputeRequest request;
  request.device = flags.device;
  request.precision = flags.precision;
  request.memory_format = flags.memory_format;
  request.conv_kernels = flags.conv_kernels;
  request.attention = flags.attention;
  request.cuda_graph = !flags.no_cuda_graph;
  return diffuse::resolve_compute(request, workload, [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); });
}

}  // namespace diffuse::cli

int main(int argc, char** argv) {
  CLI::App app{"diffuse: denoising diffusion models (DDPM, DDIM) in C++"};
  app.require_subcommand(1);
  app.fallthrough();  // the global options (--threads) after the subcommand too: `diffuse serve --threads 2`
  app.set_help_all_flag("--help-all", "Show help for every subcommand");
  app.footer(
      "Environment: DIFFUSE_DATA_DIR (data sets; README), DIFFUSE_CACHE_DIR (the cFID classifiers and the\n"
      "convolution timings kept across runs; default $XDG_CACHE_HOME/diffuse or ~/.cache/diffuse),\n"
      "DIFFUSE_TIMING_CACHE=0 (time every convolution shape afresh in each run).");
  // Default: OMP_NUM_THREADS where a launcher set it (several processes on one machine), else the
  // cores that other processes leave free (one thread per busy core less: bench/busy_machine.sh).
  const char* omp = std::getenv("OMP_NUM_THREADS");
  int threads = omp && std::atoi(omp) > 0 ? std::atoi(omp) : diffuse::free_cores();
  app.add_option("--threads", threads,
                 "Torch CPU threads (default: OMP_NUM_THREADS, else the cores that other running processes leave free)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  auto* threads_flag = app.get_option("--threads");
  app.parse_complete_callback([&] {
    diffuse::runtime_settings();  // a DIFFUSE_* switch with a value it does not take stops here, named
    torch::set_num_threads(threads);
    // a count the user or a launcher chose stays; the default follows the load in long runs
    diffuse::set_threads_follow_load(!(omp && std::atoi(omp) > 0) && threads_flag->count() == 0);
    diffuse::use_single_threaded_blas();  // torch's OpenMP threads already use the cores
    diffuse::keep_freed_memory_for_reuse();  // no page faults for every step's fresh tensors
    diffuse::cache_large_cpu_blocks();       // nor for those larger than glibc's largest mmap threshold
  });

  diffuse::cli::add_train_command(app);
  diffuse::cli::add_sample_command(app);
  diffuse::cli::add_eval_command(app);
  diffuse::cli::add_edit_command(app);
  diffuse::cli::add_convert_command(app);
  diffuse::cli::add_ema_command(app);
  diffuse::cli::add_show_command(app);
  diffuse::cli::add_schedule_command(app);
  diffuse::cli::add_bench_command(app);
#ifdef DIFFUSE_HAVE_SERVE
  diffuse::cli::add_serve_command(app);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::ExtrasError& e) {
    const int status = app.exit(e);
    std::fputs(diffuse::cli::did_you_mean(app, app.remaining(true)).c_str(), stderr);
    return status;
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
