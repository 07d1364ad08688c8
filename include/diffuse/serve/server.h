// `diffuse serve`: models loaded once, one compute worker running jobs in order, and an HTTP
// server (cpp-httplib) speaking three APIs over it — the native one (jobs with server-sent
// events: steps, previews of x_t and x̂_0, the result), OpenAI's images API and AUTOMATIC1111's
// /sdapi/v1 — beside a page, compiled into the binary, that shows diffusion at work.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "diffuse/pipeline/pipeline.h"
#include "diffuse/serve/requests.h"

namespace diffuse::serve {

struct ServeOptions {
  std::string host = "127.0.0.1";    // loopback unless asked otherwise
  int port = 8080;                   // 0: any free port (bind() says which)
  std::string api_key;               // non-empty: every API route wants `Authorization: Bearer KEY`
  size_t max_queue = 16;             // jobs waiting behind the running one; more get 429
  size_t max_body_bytes = 8u << 20;  // larger bodies get 413
  RequestLimits limits;
  int compute_threads = 0;  // the worker's intra-op threads (0: LibTorch's default)
  int http_threads = 16;    // connections served at once (streams of events hold one each)
};

struct ServedModel {
  std::string name;  // what requests call it
  Pipeline pipeline;
};

// "runs/mnist/checkpoint.safetensors" → "mnist" (the folder where the file is called
// "checkpoint"), "a/b/model.safetensors" → "model"; a diffusers folder → its name.
std::string model_name_for(const std::string& checkpoint_path);

class Server {
 public:
  Server(std::vector<ServedModel> models, ServeOptions options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (port 0: a free one) and returns the port; throws naming the address if it
  // cannot.
  int bind();
  // Serves until stop(); bind() first.
  void run();
  // Stops accepting, cancels the waiting jobs and the running one, and returns once run() can.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace diffuse::serve
