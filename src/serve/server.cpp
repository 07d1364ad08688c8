#include "diffuse/serve/server.h"

#include <httplib.h>

#include <chrono>
#include <stdexcept>

#include "diffuse/diffusion/image_condition.h"
#include "diffuse/edit/ddim_inversion.h"
#include "diffuse/edit/inpaint.h"
#include "diffuse/edit/interpolate.h"
#include "diffuse/edit/mix.h"
#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/io/image.h"
#include "diffuse/serve/base64.h"
#include "diffuse/serve/job_queue.h"
#include "diffuse/serve/page.h"

namespace diffuse::serve {

using nlohmann::json;

std::string model_name_for(const std::string& checkpoint_path) {
  // String operations, not std::filesystem (PyTorch's CUDA wheel exports copies of its functions).
  std::string p = checkpoint_path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();  // "folder/"
  const auto slash = p.find_last_of('/');
  const std::string file = slash == std::string::npos ? p : p.substr(slash + 1);
  const auto dot = file.find_last_of('.');
  const std::string stem = dot == std::string::npos || dot == 0 ? file : file.substr(0, dot);
  if (stem == "checkpoint" && slash != std::string::npos && slash > 0) {  // the folder's name
    const std::string folder = p.substr(0, slash);
    const auto up = folder.find_last_of('/');
    return up == std::string::npos ? folder : folder.substr(up + 1);
  }
  return stem;
}

namespace {

const std::vector<std::string> kCifar10Classes{"airplane", "automobile", "bird",  "cat",  "deer",
                                               "dog",      "frog",       "horse", "ship", "truck"};

ModelFacts facts_of(const ServedModel& m) {
  const auto& info = m.pipeline.info();
  ModelFacts f;
  f.name = m.name;
  f.timesteps = info.schedule.timesteps;
  const auto shape = m.pipeline.image_shape();
  f.channels = shape.at(0);
  f.image_size = shape.at(1);
  f.num_classes = info.model.num_classes;
  const bool cifar = info.data.name.find("cifar") != std::string::npos && f.num_classes == 10;
  for (int64_t k = 0; k < f.num_classes; ++k) f.class_names.push_back(cifar ? kCifar10Classes[k] : std::to_string(k));
  f.default_sampler.spacing = info.sampling.spacing;
  f.default_sampler.ddpm_large_variance = info.sampling.ddpm_large_variance;
  f.tokenizer = info.tokenizer;
  f.image_condition = info.image_condition;
  return f;
}

std::string png_base64(const torch::Tensor& image) {  // [C, H, W] in [−1, 1]
  return base64_encode(encode_png(to_uint8(image)));
}

// A grid of [N, C, H, W] images as PNG in base64; one image without the grid's border.
std::string grid_png_base64(const torch::Tensor& images) {
  return png_base64(make_grid(images.detach().cpu().clamp(-1, 1), 0, images.size(0) == 1 ? 0 : 2));
}

json error_body(const std::string& message, const std::string& type, const std::string& param = "") {
  json e{{"message", message}, {"type", type}};
  e["param"] = param.empty() ? json(nullptr) : json(param);
  return json{{"error", e}};
}

void send_json(httplib::Response& res, const json& body, int status = 200) {
  res.status = status;
  res.set_content(body.dump(), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message, const std::string& param = "") {
  const char* type = status == 400 || status == 413 ? "invalid_request_error"
                     : status == 401                ? "authentication_error"
                     : status == 404                ? "not_found"
                     : status == 429                ? "rate_limit_error"
                                                    : "server_error";
  send_json(res, error_body(message, type, param), status);
}

json parse_body(const httplib::Request& req) {
  if (req.body.empty()) return json::object();
  try {
    return json::parse(req.body);
  } catch (const json::parse_error& e) {
    throw RequestError("body", std::string("not valid JSON (") + e.what() + ")");
  }
}

// Images a request brings are at most this many pixels a side, checked in their header before
// they are decoded (the body limit bounds the file, not what it decodes to).
constexpr int64_t kMaxInputSide = 4096;

// The image a request brings, decoded to [channels, size, size]; `header`, where given, gets what
// its header says. Anything wrong is a RequestError naming `field`.
torch::Tensor decode_input(const std::string& bytes, const std::string& field, int channels, int64_t size,
                           ImageHeader* header_out = nullptr) {
  try {
    const auto header = image_bytes_header(bytes, field);
    if (header_out) *header_out = header;
    if (header.width > kMaxInputSide || header.height > kMaxInputSide) {
      throw RequestError(field, std::to_string(header.width) + "×" + std::to_string(header.height) +
                                    " is larger than the " + std::to_string(kMaxInputSide) + " pixels a side allowed");
    }
    return decode_image_u8(bytes, field, channels, size);
  } catch (const RequestError&) {
    throw;
  } catch (const std::exception& e) {
    throw RequestError(field, e.what());
  }
}

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

// Step `step` of `total` at timestep t: the seconds so far and an estimate of those left.
json step_event(int64_t step, int64_t total, int64_t t, Clock::time_point start) {
  const double elapsed = seconds_since(start);
  return {{"type", "step"},       {"step", step},
          {"steps", total},       {"t", t},
          {"elapsed_s", elapsed}, {"eta_s", elapsed / static_cast<double>(step) * static_cast<double>(total - step)}};
}

// 202 Accepted: where to follow the job.
void send_accepted(httplib::Response& res, const Job& job, json extra = json::object()) {
  extra["id"] = job.id();
  extra["status"] = "/api/jobs/" + job.id();
  extra["events"] = "/api/jobs/" + job.id() + "/events";
  send_json(res, extra, 202);
}

// OpenAI's images answer: each image as base64, or as a data: URL.
json openai_images(const json& result, bool url) {
  json data = json::array();
  for (const auto& png : result.at("images")) {
    data.push_back(url ? json{{"url", "data:image/png;base64," + png.get<std::string>()}} : json{{"b64_json", png}});
  }
  return json{{"created", std::time(nullptr)}, {"data", data}, {"seed", result.at("seed")}};
}

// PSNR of each result against its input, in dB (edit/noise_and_denoise.h's psnr).
std::vector<double> psnr_list(const torch::Tensor& results, const torch::Tensor& inputs) {
  const auto p = psnr(results, inputs).to(torch::kDouble).contiguous();
  return {p.data_ptr<double>(), p.data_ptr<double>() + p.numel()};
}

// The pixels an edit keeps, [1, 1, S, S] (1 = known): a mask's white (or, for OpenAI's masks with
// an alpha channel, its transparent pixels) marks the hole.
torch::Tensor known_pixels(const EditRequest& r, int64_t size) {
  ImageHeader header;
  const auto rgba = decode_input(r.mask, "mask", 4, size, &header).to(torch::kFloat);  // [4, S, S]
  const bool alpha = r.mask_alpha_marks_hole && (header.channels == 2 || header.channels == 4);
  const auto hole = alpha ? rgba[3] < 128 : rgba.narrow(0, 0, 3).mean(0) >= 128;
  return (1 - hole.to(torch::kFloat)).view({1, 1, size, size});
}

}  // namespace

struct Server::Impl {
  std::vector<ServedModel> models;
  std::vector<ModelFacts> facts;
  ServeOptions options;
  httplib::Server http;
  JobQueue queue;
  bool bound = false;

  Impl(std::vector<ServedModel> m, ServeOptions o)
      : models(std::move(m)), options(std::move(o)), queue(options.max_queue, [threads = options.compute_threads] {
          if (threads > 0) torch::set_num_threads(threads);  // per thread under OpenMP: set on the worker
        }) {
    for (const auto& model : models) facts.push_back(facts_of(model));
    routes();
  }

  const ServedModel& model(const std::string& name) const { return models[index_of(name)]; }

  // The work of a generation job: the sampler loop with an event per step (and previews of x_t
  // and x̂_0 every `preview_every` steps), cancellable between steps.
  JobWork generation(const GenerateRequest& r) const {
    return [this, r](Job& job) {
      const auto& pipe = model(r.model).pipeline;
      GenerateOptions g = default_generate_options(pipe);
      g.sampler = r.sampler;
      g.steps = r.steps;
      g.n = r.n;
      g.seed = r.seed;
      g.guidance = r.guidance;
      if (r.class_label >= 0) g.labels = torch::full({r.n}, r.class_label, torch::kLong);
      if (!r.prompt.empty()) g.prompts = {r.prompt};
      g.negative_prompt = r.negative_prompt;
      const auto start = Clock::now();
      const int64_t batches = (r.n + g.batch_size - 1) / g.batch_size;
      const int64_t total = batches * r.steps;
      int64_t done = 0;
      auto on_step = [&](int64_t /*first_image*/, const SampleStep& s) {
        job.check_cancelled();
        ++done;
        json event = step_event(done, total, s.t, start);
        const bool preview = r.preview_every > 0 && (s.index % r.preview_every == 0 || s.index + 1 == s.steps);
        if (preview) {
          event["x_t"] = grid_png_base64(s.x_t);
          event["x0"] = grid_png_base64(s.x0_pred);
        }
        job.emit(std::move(event));
      };
      const auto images = generate(pipe, g, on_step);
      if (!torch::isfinite(images).all().item<bool>()) throw std::runtime_error("the samples hold NaN or Inf");
      json out{
          {"model", r.model},       {"sampler", r.sampler.name},      {"steps", r.steps}, {"seed", r.seed}, {"n", r.n},
          {"guidance", r.guidance}, {"seconds", seconds_since(start)}};
      out["class"] = r.class_label >= 0 ? json(r.class_label) : json(nullptr);
      out["prompt"] = r.prompt.empty() ? json(nullptr) : json(r.prompt);
      out["images"] = json::array();
      for (int64_t i = 0; i < images.size(0); ++i) out["images"].push_back(png_base64(images[i]));
      out["grid"] = grid_png_base64(images);
      return out;
    };
  }

  // The work of an edit job: noise-then-denoise, inpainting, inversion, mixing or upscaling of the
  // request's image, n times with their own noise; the network is watched for the progress events
  // (x_t as it enters it) and for cancelling.
  JobWork editing(const EditRequest& r) const {
    const auto& facts_of_model = facts.at(index_of(r.model));
    const auto image = from_uint8(
        decode_input(r.image, "image", static_cast<int>(facts_of_model.channels), facts_of_model.image_size));
    const auto known = r.kind == "inpaint" ? known_pixels(r, facts_of_model.image_size) : torch::Tensor();
    const auto image_b = r.kind == "mix"
                             ? from_uint8(decode_input(r.image_b, "image_b", static_cast<int>(facts_of_model.channels),
                                                       facts_of_model.image_size))
                             : torch::Tensor();
    return [this, r, image, known, image_b](Job& job) {
      const auto& pipe = model(r.model).pipeline;
      const auto x0 = image.unsqueeze(0).expand({r.n, -1, -1, -1}).contiguous().to(pipe.compute.device);
      // A model trained for inpainting draws x_0 ~ p(x_0 | [x ⊙ m, m]); any other inpaints by RePaint.
      const auto& condition = pipe.info().image_condition;
      const bool inpainting_model = r.kind == "inpaint" && condition && condition->kind == ImageConditionKind::inpaint;
      // upscale (requests.cpp checked the model): c = the image's f×f block means, grown back bicubically
      const auto low_res = r.kind == "upscale" ? super_resolution_condition(x0, condition->factor) : torch::Tensor();
      Denoiser net = make_unconditional_denoiser(pipe);
      if (inpainting_model || low_res.defined()) {
        net = [conditioned = make_denoiser(pipe),
               c = low_res.defined() ? low_res : inpaint_condition(x0, known.to(x0.device()))](
                  const torch::Tensor& x, const torch::Tensor& t) { return conditioned(x, t, c); };
      }
      const auto sampler = make_sampler(r.sampler, pipe.diffusion.schedule());
      const int64_t rounds = inpainting_model ? 1 : 1 + r.resample;
      const int64_t total = sampler->evaluations(r.steps) * rounds * (r.kind == "invert" ? 2 : 1);
      const auto start = Clock::now();
      int64_t calls = 0;
      const Denoiser watched = [&](const torch::Tensor& x_t, const torch::Tensor& t) {
        job.check_cancelled();
        ++calls;
        json event = step_event(std::min(calls, total), total, t[0].item<int64_t>(), start);
        if (r.preview_every > 0 && (calls - 1) % r.preview_every == 0) {
          event["x_t"] = grid_png_base64(x_t);
        }
        job.emit(std::move(event));
        return net(x_t, t);
      };
      auto gen = at::detail::createCPUGenerator(r.seed);
      const bool clip = pipe.info().sampling.clip_x0;
      json out{{"model", r.model}, {"kind", r.kind}, {"sampler", r.sampler.name}, {"steps", r.steps},
               {"seed", r.seed},   {"n", r.n},       {"input", png_base64(image)}};
      torch::Tensor result;
      torch::NoGradGuard no_grad;
      if (r.kind == "denoise") {
        const auto d = noise_and_denoise(pipe.diffusion, *sampler, watched, x0, r.t, r.steps, clip, gen);
        result = d.result.cpu().clamp(-1, 1);
        out["t"] = d.t;
        out["strength"] = r.strength;
        out["noised"] = grid_png_base64(d.x_t);
        out["psnr"] = psnr_list(result, x0.cpu());
      } else if (r.kind == "mix") {
        // (1 − λ_k) a + λ_k b for λ_k = k/(n − 1), noised to t with one ε, denoised
        const auto device = pipe.compute.device;
        result = denoise_mixtures(pipe.diffusion, *sampler, watched, image.to(device), image_b.to(device), r.n, r.t,
                                  r.steps, clip, gen)
                     .cpu()
                     .clamp(-1, 1);
        out["t"] = r.t;
        out["lambda"] = mixture_weights(r.n);
        out["input_b"] = png_base64(image_b);
      } else if (r.kind == "invert") {
        // x_0 → x_T along DDIM's ODE, and back: how well the round trip returns the image
        const auto latent = ddim_invert(pipe.diffusion, watched, x0, r.steps, r.sampler.spacing);
        result = ddim_decode(pipe.diffusion, watched, latent, r.steps, r.sampler.spacing).cpu().clamp(-1, 1);
        out["latent"] = grid_png_base64(latent.cpu() / 3.0);  // N(0, I) drawn at ±3σ
        out["latent_std"] = latent.std().item<double>();
        out["psnr"] = psnr_list(result, x0.cpu());
      } else if (inpainting_model || low_res.defined()) {  // x_0 ~ p(x_0 | c) from the model under its condition
        const auto x_T = torch::randn(x0.sizes(), gen).to(x0.device());
        const auto drawn = sample_loop(pipe.diffusion, *sampler, watched, x_T, SampleOptions{r.steps, clip}, gen);
        if (low_res.defined()) {  // beside c itself: bicubic interpolation
          result = drawn.cpu().clamp(-1, 1);
          const auto bicubic = low_res.narrow(0, 0, 1).cpu().clamp(-1, 1);
          out["method"] = "super-resolution model";
          out["factor"] = condition->factor;
          out["bicubic"] = png_base64(bicubic[0]);
          out["psnr"] = psnr_list(result, x0.cpu());
          out["psnr_bicubic"] = psnr_list(bicubic, x0.narrow(0, 0, 1).cpu())[0];
        } else {  // the known pixels pasted back into the model's sample
          const auto m = known.to(x0.device());
          result = (m * x0 + (1 - m) * drawn).cpu().clamp(-1, 1);
          out["method"] = "inpainting model";
          out["known"] = png_base64((image * known[0] + (1 - known[0]) * 0.0).clamp(-1, 1));
        }
      } else {
        InpaintOptions io;
        io.steps = r.steps;
        io.resample = r.resample;
        io.clip_x0 = clip;
        result = inpaint(pipe.diffusion, *sampler, watched, x0, known.to(x0.device()), io, gen).cpu().clamp(-1, 1);
        out["method"] = "RePaint";
        out["known"] = png_base64((image * known[0] + (1 - known[0]) * 0.0).clamp(-1, 1));  // the hole in grey
      }
      if (!torch::isfinite(result).all().item<bool>()) throw std::runtime_error("the result holds NaN or Inf");
      out["seconds"] = seconds_since(start);
      out["images"] = json::array();
      for (int64_t i = 0; i < result.size(0); ++i) out["images"].push_back(png_base64(result[i]));
      out["grid"] = grid_png_base64(result);
      return out;
    };
  }

  // The work of an interpolation job: x_T of the two seeds (as generate() draws them for one
  // image), slerp between them, all frames decoded by DDIM with η = 0 in one batch.
  JobWork interpolation(const InterpolateRequest& r) const {
    return [this, r](Job& job) {
      const auto& pipe = model(r.model).pipeline;
      const auto shape = pipe.image_shape();
      auto latent = [&](uint64_t seed) {
        auto gen = at::detail::createCPUGenerator(seed);
        return torch::randn({1, shape[0], shape[1], shape[2]}, gen)[0];
      };
      const auto a = latent(r.seed_a), b = latent(r.seed_b);
      std::vector<torch::Tensor> frames;
      std::vector<double> lambdas;
      for (int64_t k = 0; k < r.frames; ++k) {
        lambdas.push_back(static_cast<double>(k) / static_cast<double>(r.frames - 1));
        frames.push_back(slerp(a, b, lambdas.back()));
      }
      SamplerConfig ddim = default_generate_options(pipe).sampler;
      ddim.name = "ddim";
      ddim.eta = 0.0;
      const auto sampler = make_sampler(ddim, pipe.diffusion.schedule());
      SampleOptions options;
      options.steps = r.steps;
      options.clip_x0 = pipe.info().sampling.clip_x0;
      const auto net = make_unconditional_denoiser(pipe);
      const auto start = Clock::now();
      auto on_step = [&](const SampleStep& s) {
        job.check_cancelled();
        json event = step_event(s.index + 1, s.steps, s.t, start);
        if (r.preview_every > 0 && (s.index % r.preview_every == 0 || s.index + 1 == s.steps)) {
          event["x_t"] = grid_png_base64(s.x_t);
          event["x0"] = grid_png_base64(s.x0_pred);
        }
        job.emit(std::move(event));
      };
      auto gen = at::detail::createCPUGenerator(r.seed_a);
      const auto x_T = torch::stack(frames).to(pipe.compute.device);
      const auto images = sample_loop(pipe.diffusion, *sampler, net, x_T, options, gen, on_step).cpu().clamp(-1, 1);
      json out{{"model", r.model}, {"seed_a", r.seed_a}, {"seed_b", r.seed_b},
               {"steps", r.steps}, {"lambda", lambdas},  {"seconds", seconds_since(start)}};
      out["images"] = json::array();
      for (int64_t i = 0; i < images.size(0); ++i) out["images"].push_back(png_base64(images[i]));
      out["grid"] = png_base64(make_grid(images, r.frames));
      return out;
    };
  }

  size_t index_of(const std::string& name) const {
    for (size_t i = 0; i < models.size(); ++i)
      if (models[i].name == name) return i;
    throw std::logic_error("no model " + name);
  }

  // Queues the job; a 429 with Retry-After where the queue is full.
  std::shared_ptr<Job> submit(JobWork work, httplib::Response& res) {
    auto job = queue.submit(std::move(work));
    if (!job) {
      res.set_header("Retry-After", "5");
      send_error(res, 429, "the queue is full (" + std::to_string(options.max_queue) + " jobs wait); try again later");
    }
    return job;
  }

  // Answers once the job has ended, with `answer(result)`; a client that goes away cancels it.
  void respond_when_done(const std::shared_ptr<Job>& job, httplib::Response& res,
                         std::function<json(const json&)> answer) {
    res.set_chunked_content_provider("application/json", [this, job, answer](size_t, httplib::DataSink& sink) {
      while (!job->wait_until_ended(std::chrono::milliseconds(100))) {
        if (!sink.is_writable()) {
          queue.cancel(job->id());
          return false;
        }
      }
      json body;
      switch (job->state()) {
        case JobState::done:
          body = answer(job->result());
          break;
        case JobState::cancelled:
          body = error_body("the job was cancelled", "cancelled");
          break;
        default:
          body = error_body("the job failed: " + job->error(), "server_error");
          break;
      }
      const auto text = body.dump();
      sink.write(text.data(), text.size());
      sink.done();
      return true;
    });
  }

  void routes();
};

void Server::Impl::routes() {
  http.set_payload_max_length(options.max_body_bytes);
  const int http_threads = options.http_threads;
  http.new_task_queue = [http_threads] { return new httplib::ThreadPool(static_cast<size_t>(http_threads)); };

  // Errors of every route as JSON naming the field; anything unexpected as a 500.
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const RequestError& e) {
      send_error(res, 400, e.what(), e.field);
    } catch (const std::exception& e) {
      send_error(res, 500, e.what());
    } catch (...) {
      send_error(res, 500, "unknown error");
    }
  });
  http.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;  // a route's own error
    if (res.status == 404)
      send_error(res, 404, "no route " + req.method + " " + req.path);
    else if (res.status == 413)
      send_error(res, 413, "the body is larger than this server accepts");
    else if (res.status == 400)  // refused by the HTTP layer before any route read it
      send_error(res, 400,
                 req.is_multipart_form_data()
                     ? "the multipart/form-data body cannot be read (its boundary or a part's headers are malformed)"
                     : "the request cannot be read",
                 "body");
    else
      send_error(res, res.status, "HTTP error " + std::to_string(res.status));
  });
  // The API key: every route but the page and the health check.
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (options.api_key.empty() || req.path == "/" || req.path == "/api/health") {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    if (req.get_header_value("Authorization") == "Bearer " + options.api_key) {
      return httplib::Server::HandlerResponse::Unhandled;
    }
    res.set_header("WWW-Authenticate", "Bearer");
    send_error(res, 401,
               req.has_header("Authorization") ? "wrong API key"
                                               : "this server wants an API key "
                                                 "(Authorization: Bearer KEY)");
    return httplib::Server::HandlerResponse::Handled;
  });

  http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(page_html(), "text/html; charset=utf-8");
  });

  // ---- native API
  http.Get("/api/health", [this](const httplib::Request&, httplib::Response& res) {
    const auto running = queue.running();
    send_json(res, {{"status", "ok"},
                    {"models", models.size()},
                    {"waiting", queue.waiting()},
                    {"max_queue", options.max_queue},
                    {"running", running ? json(running->id()) : json(nullptr)},
                    {"api_key", !options.api_key.empty()}});
  });
  http.Get("/api/models", [this](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (size_t i = 0; i < models.size(); ++i) {
      const auto& f = facts[i];
      const auto& info = models[i].pipeline.info();
      list.push_back({{"name", f.name},
                      {"image_size", f.image_size},
                      {"channels", f.channels},
                      {"classes", f.class_names},
                      {"timesteps", f.timesteps},
                      {"objective", to_string(info.objective)},
                      {"parameters", models[i].pipeline.checkpoint.model->parameter_count()},
                      {"step", info.step},
                      {"spacing", to_string(f.default_sampler.spacing)},
                      {"spacings", timestep_spacing_names()},
                      {"samplers", sampler_names()},
                      {"text", f.tokenizer ? json{{"vocabulary", f.tokenizer->words()},
                                                  {"max_words", f.tokenizer->max_tokens() - 1}}
                                           : json(nullptr)},
                      {"image_condition", info.image_condition ? to_json(*info.image_condition) : json(nullptr)}});
    }
    send_json(res,
              {{"models", list},
               {"limits",
                {{"max_images", options.limits.max_images}, {"max_network_calls", options.limits.max_network_calls}}}});
  });
  http.Get(R"(/api/models/([^/]+)/schedule)", [this](const httplib::Request& req, httplib::Response& res) {
    for (const auto& m : models) {
      if (m.name != req.matches[1].str()) continue;
      const auto& s = m.pipeline.diffusion.schedule();
      send_json(res, {{"beta", s.betas}, {"alpha_bar", s.alpha_bar}, {"snr", s.snr}});
      return;
    }
    send_error(res, 404, "no model named '" + req.matches[1].str() + "'");
  });
  http.Post("/api/generate", [this](const httplib::Request& req, httplib::Response& res) {
    const auto r = native_generate_request(parse_body(req), facts, options.limits);
    if (auto job = submit(generation(r), res)) {
      send_accepted(res, *job, {{"seed", r.seed}, {"steps", r.steps}});
    }
  });
  http.Post("/api/edit", [this](const httplib::Request& req, httplib::Response& res) {
    const auto r = native_edit_request(parse_body(req), facts, options.limits);
    if (auto job = submit(editing(r), res)) {
      send_accepted(res, *job, {{"seed", r.seed}, {"steps", r.steps}});
    }
  });
  http.Post("/api/interpolate", [this](const httplib::Request& req, httplib::Response& res) {
    const auto r = native_interpolate_request(parse_body(req), facts, options.limits);
    if (auto job = submit(interpolation(r), res)) {
      send_accepted(res, *job);
    }
  });
  http.Get(R"(/api/jobs/([0-9a-f]+))", [this](const httplib::Request& req, httplib::Response& res) {
    const auto job = queue.find(req.matches[1].str());
    if (!job) return send_error(res, 404, "no job " + req.matches[1].str());
    json body{{"id", job->id()}, {"state", to_string(job->state())}, {"step", job->latest_step()}};
    if (job->state() == JobState::done) body["result"] = job->result();
    if (job->state() == JobState::failed) body["error"] = job->error();
    send_json(res, body);
  });
  http.Delete(R"(/api/jobs/([0-9a-f]+))", [this](const httplib::Request& req, httplib::Response& res) {
    const auto job = queue.find(req.matches[1].str());
    if (!job) return send_error(res, 404, "no job " + req.matches[1].str());
    queue.cancel(job->id());
    send_json(res, {{"id", job->id()}, {"state", to_string(job->state())}, {"cancel_requested", true}});
  });
  // Server-sent events: each of the job's events as `event: TYPE` + `data: JSON`, from the first;
  // the stream ends with the job.
  http.Get(R"(/api/jobs/([0-9a-f]+)/events)", [this](const httplib::Request& req, httplib::Response& res) {
    const auto job = queue.find(req.matches[1].str());
    if (!job) return send_error(res, 404, "no job " + req.matches[1].str());
    res.set_header("Cache-Control", "no-cache");
    auto next = std::make_shared<size_t>(0);
    res.set_chunked_content_provider("text/event-stream", [job, next](size_t, httplib::DataSink& sink) {
      const auto events = job->events_since(*next, std::chrono::milliseconds(250));
      for (const auto& e : events) {
        const auto text = "event: " + e.value("type", "message") + "\ndata: " + e.dump() + "\n\n";
        if (!sink.write(text.data(), text.size())) return false;
      }
      *next += events.size();
      if (events.empty() && job->ended() && job->events_since(*next, std::chrono::milliseconds(0)).empty()) {
        sink.done();
        return true;
      }
      if (events.empty() && !sink.is_writable()) return false;  // the client went away
      return true;
    });
  });

  // ---- OpenAI images API
  http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    for (const auto& f : facts)
      data.push_back({{"id", f.name}, {"object", "model"}, {"created", 0}, {"owned_by", "diffuse"}});
    send_json(res, {{"object", "list"}, {"data", data}});
  });
  http.Post("/v1/images/generations", [this](const httplib::Request& req, httplib::Response& res) {
    const auto body = parse_body(req);
    const auto r = openai_generate_request(body, facts, options.limits);
    const bool url = body.value("response_format", "b64_json") == "url";
    if (auto job = submit(generation(r), res)) {
      respond_when_done(job, res, [url](const json& result) { return openai_images(result, url); });
    }
  });

  http.Post("/v1/images/edits", [this](const httplib::Request& req, httplib::Response& res) {
    if (!req.is_multipart_form_data()) throw RequestError("body", "must be multipart/form-data");
    std::map<std::string, std::string> fields;
    for (const auto& [name, part] : req.files) {
      if (part.filename.empty() && name != "image" && name != "mask") fields[name] = part.content;
    }
    const auto r =
        openai_edit_request(fields, req.has_file("image") ? req.get_file_value("image").content : "",
                            req.has_file("mask") ? req.get_file_value("mask").content : "", facts, options.limits);
    const bool url = fields.count("response_format") && fields.at("response_format") == "url";
    if (auto job = submit(editing(r), res)) {
      respond_when_done(job, res, [url](const json& result) { return openai_images(result, url); });
    }
  });

  // ---- AUTOMATIC1111 API
  http.Get("/sdapi/v1/samplers", [](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& [a1111, ours] : a1111_sampler_names()) {
      list.push_back({{"name", a1111}, {"aliases", {ours}}, {"options", json::object()}});
    }
    send_json(res, list);
  });
  http.Get("/sdapi/v1/sd-models", [this](const httplib::Request&, httplib::Response& res) {
    json list = json::array();
    for (const auto& f : facts) {
      list.push_back({{"title", f.name},
                      {"model_name", f.name},
                      {"hash", nullptr},
                      {"sha256", nullptr},
                      {"filename", f.name},
                      {"config", nullptr}});
    }
    send_json(res, list);
  });
  http.Get("/sdapi/v1/options", [this](const httplib::Request&, httplib::Response& res) {
    send_json(res, {{"sd_model_checkpoint", facts.empty() ? json(nullptr) : json(facts.front().name)}});
  });
  http.Get("/sdapi/v1/progress", [this](const httplib::Request&, httplib::Response& res) {
    const auto job = queue.running();
    const auto step = job ? job->latest_step() : json();
    const double progress = step.is_object() ? step.value("step", 0.0) / std::max(1.0, step.value("steps", 1.0)) : 0.0;
    send_json(res, {{"progress", progress},
                    {"eta_relative", step.is_object() ? step.value("eta_s", 0.0) : 0.0},
                    {"state",
                     {{"job", job ? job->id() : ""},
                      {"job_count", queue.waiting() + (job ? 1 : 0)},
                      {"sampling_step", step.is_object() ? step.value("step", 0) : 0},
                      {"sampling_steps", step.is_object() ? step.value("steps", 0) : 0},
                      {"interrupted", job ? job->cancel_requested() : false}}},
                    {"current_image", step.is_object() && step.contains("x0") ? step["x0"] : json(nullptr)}});
  });
  http.Post("/sdapi/v1/interrupt", [this](const httplib::Request&, httplib::Response& res) {
    if (const auto job = queue.running()) queue.cancel(job->id());
    send_json(res, json::object());
  });
  http.Post("/sdapi/v1/txt2img", [this](const httplib::Request& req, httplib::Response& res) {
    const auto body = parse_body(req);
    const auto r = a1111_generate_request(body, facts, options.limits);
    if (auto job = submit(generation(r), res)) {
      respond_when_done(job, res, [body](const json& result) {
        json info{{"seed", result.at("seed")},
                  {"sampler", result.at("sampler")},
                  {"steps", result.at("steps")},
                  {"sd_model_name", result.at("model")}};
        return json{{"images", result.at("images")}, {"parameters", body}, {"info", info.dump()}};
      });
    }
  });
  http.Post("/sdapi/v1/img2img", [this](const httplib::Request& req, httplib::Response& res) {
    const auto body = parse_body(req);
    const auto r = a1111_edit_request(body, facts, options.limits);
    if (auto job = submit(editing(r), res)) {
      json parameters = body;
      parameters.erase("init_images");  // A1111 answers without the images it was sent
      parameters.erase("mask");
      respond_when_done(job, res, [parameters](const json& result) {
        json info{{"seed", result.at("seed")},
                  {"sampler", result.at("sampler")},
                  {"steps", result.at("steps")},
                  {"sd_model_name", result.at("model")},
                  {"kind", result.at("kind")}};
        return json{{"images", result.at("images")}, {"parameters", parameters}, {"info", info.dump()}};
      });
    }
  });
}

Server::Server(std::vector<ServedModel> models, ServeOptions options)
    : impl_(new Impl(std::move(models), std::move(options))) {}

Server::~Server() { stop(); }

int Server::bind() {
  auto& o = impl_->options;
  const int port = o.port == 0                                ? impl_->http.bind_to_any_port(o.host)
                   : impl_->http.bind_to_port(o.host, o.port) ? o.port
                                                              : -1;
  if (port < 0) throw std::runtime_error("cannot listen on " + o.host + ":" + std::to_string(o.port));
  impl_->bound = true;
  return port;
}

void Server::run() {
  if (!impl_->bound) throw std::logic_error("Server::run before bind");
  impl_->http.listen_after_bind();
}

void Server::stop() {
  impl_->http.stop();
  impl_->queue.stop();
}

}  // namespace diffuse::serve
