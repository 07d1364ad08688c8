// diffuse serve: the models loaded once, the page at / and three HTTP APIs (serve/server.h),
// until SIGINT or SIGTERM.
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "commands.h"
#include "diffuse/serve/server.h"

namespace diffuse::cli {

namespace {

int signal_pipe[2] = {-1, -1};

struct ServeFlags {
  std::vector<std::string> checkpoints;
  serve::ServeOptions options;
  ComputeFlags compute;
};

void run_serve(ServeFlags& o) {
  if (o.options.api_key.empty()) {
    if (const char* key = std::getenv("DIFFUSE_API_KEY")) o.options.api_key = key;
  }
  const auto compute = resolve_compute(o.compute, Workload::inference);
  std::vector<serve::ServedModel> models;
  for (const auto& path : o.checkpoints) {
    auto name = serve::model_name_for(path);
    for (int k = 2; std::any_of(models.begin(), models.end(), [&](const auto& m) { return m.name == name; }); ++k) {
      name = serve::model_name_for(path) + "-" + std::to_string(k);
    }
    models.push_back({name, load_pipeline(path, compute)});
    const auto& info = models.back().pipeline.info();
    std::fprintf(stderr, "model %s: %s, %lld parameters, %lldx%lld, %lld classes, step %lld\n", name.c_str(),
                 path.c_str(), static_cast<long long>(models.back().pipeline.checkpoint.model->parameter_count()),
                 static_cast<long long>(info.data.image_size), static_cast<long long>(info.data.image_size),
                 static_cast<long long>(info.model.num_classes), static_cast<long long>(info.step));
  }
  o.options.compute_threads = torch::get_num_threads();
  serve::Server server(std::move(models), o.options);
  const int port = server.bind();
  std::fprintf(stderr, "serving on http://%s:%d/ (%s; Ctrl-C stops)\n", o.options.host.c_str(), port,
               o.options.api_key.empty() ? "no API key" : "API key required");
  // SIGINT and SIGTERM write their number to a pipe (all a handler may safely do, on whichever
  // thread it lands); a thread reading the pipe stops the server, which lets run() return.
  if (pipe(signal_pipe) != 0) throw std::runtime_error("serve: cannot make a pipe for the signals");
  struct sigaction action {};
  action.sa_handler = [](int signal) {
    const char byte = static_cast<char>(signal);
    [[maybe_unused]] const auto written = write(signal_pipe[1], &byte, 1);
  };
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  std::thread waiter([&] {
    char signal = 0;
    if (read(signal_pipe[0], &signal, 1) == 1 && signal != 0) {
      std::fprintf(stderr, "\n%s: stopping (the running job is cancelled)\n", signal == SIGINT ? "SIGINT" : "SIGTERM");
    }
    server.stop();
  });
  server.run();
  // run() also returns when listening fails: wake the waiter so that it can be joined
  const char none = 0;
  [[maybe_unused]] const auto written = write(signal_pipe[1], &none, 1);
  waiter.join();
}

}  // namespace

void add_serve_command(CLI::App& app) {
  auto o = std::make_shared<ServeFlags>();
  auto* cmd = app.add_subcommand("serve", "Serve models over HTTP: a page at / and the native, OpenAI and A1111 APIs");
  cmd->add_option("--checkpoint", o->checkpoints,
                  "Model checkpoint (.safetensors or a diffusers folder); repeat for more")
      ->required()
      ->check(CLI::ExistingPath);
  cmd->add_option("--host", o->options.host, "Address to listen on (0.0.0.0: every interface)")->capture_default_str();
  cmd->add_option("--port", o->options.port, "Port (0: any free one)")
      ->check(CLI::Range(0, 65535))
      ->capture_default_str();
  cmd->add_option("--api-key", o->options.api_key,
                  "Require `Authorization: Bearer KEY` on the API (default: DIFFUSE_API_KEY, else none)");
  cmd->add_option("--max-queue", o->options.max_queue, "Jobs that may wait; more get 429")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  cmd->add_option("--max-images", o->options.limits.max_images, "Images per request")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--max-network-calls", o->options.limits.max_network_calls, "Images × steps per request")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  add_compute_options(*cmd, o->compute);
  add_cuda_graph_option(*cmd, o->compute);
  cmd->callback([o] { run_serve(*o); });
}

}  // namespace diffuse::cli
