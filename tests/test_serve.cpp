// `diffuse serve` over HTTP: a server on an ephemeral loopback port in this process, with two
// small random models (one unconditional, one with three classes), asked through cpp-httplib's
// client as any program would: every route of the three APIs, their errors, cancelling, the
// bounded queue, the API key; and the results against the library's own generate().
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "diffuse/diffusion/image_condition.h"
#include "diffuse/edit/ddim_inversion.h"
#include "diffuse/edit/mix.h"
#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/io/image.h"
#include "diffuse/serve/base64.h"
#include "diffuse/serve/server.h"
#include "diffuse_build_config.h"
#include "support/temp_dir.h"

using namespace diffuse;
using namespace diffuse::serve;
using diffuse::testing::TempDir;
using nlohmann::json;

namespace {

// A model of `info` with weights drawn from N(0, 0.05²) (seed `seed`), saved as DIR/NAME.safetensors.
std::string save_random_checkpoint(const TempDir& dir, const std::string& name, const CheckpointInfo& info,
                                   uint64_t seed) {
  torch::manual_seed(seed);
  UNet model(info.model);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) p.normal_(0.0, 0.05);
  }
  const std::string path = dir / (name + ".safetensors");
  save_checkpoint(path, model, info);
  return path;
}

std::string write_checkpoint(const TempDir& dir, const std::string& name, const std::string& preset, int64_t size,
                             int64_t classes, int64_t timesteps) {
  CheckpointInfo info;
  info.model = unet_config_by_name(preset, 1, size);
  info.model.num_classes = classes;
  info.schedule.timesteps = timesteps;
  info.data = DataInfo{"test", 1, size, classes};
  return save_random_checkpoint(dir, name, info, 3);
}

// A tiny 8×8 grey model with an image condition (its channels beside x_t), random weights, T = 100.
std::string write_image_conditional_checkpoint(const TempDir& dir, const std::string& name, ImageCondition condition) {
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", 1, 8);
  info.image_condition = condition;
  info.model.extra_in_channels = condition_channels(condition, 1);
  info.schedule.timesteps = 100;
  info.data = DataInfo{"test", 1, 8, 0};
  return save_random_checkpoint(dir, name, info, 0);
}

// The library's own DDIM sample (η = 0, the checkpoint's spacing and clipping) of an image-conditional
// model under the condition c [1, C', H, W], x_T drawn from `seed` as the server draws it for one image.
torch::Tensor ddim_sample_under(const Pipeline& pipe, const torch::Tensor& c, int64_t steps, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto shape = pipe.image_shape();
  const auto x_T = torch::randn({1, shape[0], shape[1], shape[2]}, gen);
  const auto conditioned = make_denoiser(pipe);
  SamplerConfig ddim;
  ddim.spacing = pipe.info().sampling.spacing;
  const auto sampler = make_sampler(ddim, pipe.diffusion.schedule());
  const Denoiser net = [&](const torch::Tensor& x, const torch::Tensor& t) { return conditioned(x, t, c); };
  torch::NoGradGuard no_grad;
  return sample_loop(pipe.diffusion, *sampler, net, x_T, SampleOptions{steps, pipe.info().sampling.clip_x0}, gen);
}

// A server in a thread of this process, stopped and joined at the end of the test.
class RunningServer {
 public:
  RunningServer(const std::vector<std::string>& paths, ServeOptions options) {
    std::vector<ServedModel> models;
    for (const auto& path : paths) models.push_back({model_name_for(path), load_pipeline(path)});
    options.port = 0;
    server_ = std::make_unique<Server>(std::move(models), options);
    port_ = server_->bind();
    thread_ = std::thread([this] { server_->run(); });
  }
  ~RunningServer() {
    server_->stop();
    thread_.join();
  }
  httplib::Client client(const std::string& key = "") const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(60, 0);
    if (!key.empty()) c.set_bearer_token_auth(key.c_str());
    return c;
  }
  int port() const { return port_; }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
  int port_ = 0;
};

json post(httplib::Client& c, const std::string& path, const json& body, int expected_status) {
  const auto res = c.Post(path.c_str(), body.dump(), "application/json");
  EXPECT_TRUE(res) << path << ": no response";
  if (!res) return {};
  EXPECT_EQ(res->status, expected_status) << path << " " << body.dump() << " → " << res->body.substr(0, 400);
  return json::parse(res->body);
}

json get(httplib::Client& c, const std::string& path, int expected_status = 200) {
  const auto res = c.Get(path.c_str());
  EXPECT_TRUE(res) << path << ": no response";
  if (!res) return {};
  EXPECT_EQ(res->status, expected_status) << path << " → " << res->body.substr(0, 400);
  return json::parse(res->body);
}

// The job's server-sent events, until its stream ends.
std::vector<json> follow_events(httplib::Client& c, const std::string& id) {
  std::string stream;
  const auto res = c.Get(("/api/jobs/" + id + "/events").c_str(), [&](const char* data, size_t n) {
    stream.append(data, n);
    return true;
  });
  EXPECT_TRUE(res);
  std::vector<json> events;
  size_t at = 0;
  while ((at = stream.find("data: ", at)) != std::string::npos) {
    const auto end = stream.find("\n\n", at);
    events.push_back(json::parse(stream.substr(at + 6, end - at - 6)));
    at = end;
  }
  return events;
}

torch::Tensor decode_png(const std::string& b64) { return decode_image_u8(base64_decode(b64), "result", 1, 0); }

// A native inpainting job (5 steps, seed 1) of an image file's bytes under a mask (white = fill in):
// its last event.
json native_inpainting(httplib::Client& c, const std::string& png, const torch::Tensor& mask_u8) {
  const std::string id = post(c, "/api/edit",
                              {{"kind", "inpaint"},
                               {"image", base64_encode(png)},
                               {"mask", base64_encode(encode_png(mask_u8))},
                               {"steps", 5},
                               {"seed", 1}},
                              202)["id"];
  return follow_events(c, id).back();
}

struct Fixture {
  TempDir dir;
  std::string plain = write_checkpoint(dir, "plain", "tiny", 8, 0, 100);
  std::string classes = write_checkpoint(dir, "classes", "tiny", 8, 3, 100);
};

}  // namespace

TEST(Serve, HealthAndModelsDescribeEveryServedModel) {
  Fixture f;
  RunningServer server({f.plain, f.classes}, {});
  auto c = server.client();
  const auto health = get(c, "/api/health");
  EXPECT_EQ(health["status"], "ok");
  EXPECT_EQ(health["models"], 2);
  const auto models = get(c, "/api/models")["models"];
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0]["name"], "plain");
  EXPECT_EQ(models[0]["classes"].size(), 0u);
  EXPECT_EQ(models[1]["name"], "classes");
  EXPECT_EQ(models[1]["classes"], json({"0", "1", "2"}));
  EXPECT_EQ(models[1]["image_size"], 8);
  EXPECT_EQ(models[1]["timesteps"], 100);
  EXPECT_EQ(models[1]["spacings"], json(timestep_spacing_names()));  // what the page's spacing select offers
  const auto schedule = get(c, "/api/models/plain/schedule");
  ASSERT_EQ(schedule["alpha_bar"].size(), 100u);
  // ᾱ_t = ∏ (1 − β_s), recomputed from the β the route gives
  double alpha_bar = 1.0;
  for (size_t t = 0; t < 100; ++t) alpha_bar *= 1.0 - schedule["beta"][t].get<double>();
  EXPECT_NEAR(schedule["alpha_bar"][99].get<double>(), alpha_bar, 1e-12);
  get(c, "/api/models/nothing/schedule", 404);
  const auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->body.find("/api/generate"), std::string::npos);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
}

TEST(Serve, AGenerationJobStreamsItsStepsAndGivesTheLibrarysImages) {
  Fixture f;
  RunningServer server({f.plain, f.classes}, {});
  auto c = server.client();
  const json request{{"model", "classes"}, {"sampler", "ddim"}, {"steps", 10},     {"n", 3},
                     {"seed", 42},         {"class", 2},        {"guidance", 1.5}, {"preview_every", 4}};
  const auto reply = post(c, "/api/generate", request, 202);
  const std::string id = reply["id"];
  const auto events = follow_events(c, id);
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["type"], "queued");
  EXPECT_EQ(events.back()["type"], "done");
  std::vector<int64_t> steps, previews;
  for (const auto& e : events) {
    if (e["type"] != "step") continue;
    steps.push_back(e["step"]);
    if (e.contains("x0")) previews.push_back(e["step"]);
  }
  EXPECT_EQ(steps, std::vector<int64_t>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  EXPECT_EQ(previews, std::vector<int64_t>({1, 5, 9, 10}));  // every 4th step from the first, and the last

  // The same images as the library's generate() with the same options.
  const auto result = events.back()["result"];
  EXPECT_EQ(result["seed"], 42);
  ASSERT_EQ(result["images"].size(), 3u);
  const auto pipe = load_pipeline(f.classes);
  auto g = default_generate_options(pipe);
  g.sampler.name = "ddim";
  g.steps = 10;
  g.n = 3;
  g.seed = 42;
  g.guidance = 1.5;
  g.labels = torch::full({3}, 2, torch::kLong);
  const auto expected = to_uint8(generate(pipe, g));
  for (int64_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(torch::equal(decode_png(result["images"][i]), expected[i])) << "image " << i;
  }
  // The job stays readable after it ended.
  const auto status = get(c, "/api/jobs/" + id);
  EXPECT_EQ(status["state"], "done");
  EXPECT_EQ(status["result"]["images"], result["images"]);
}

TEST(Serve, TextConditionalModelsTakePromptsInEveryApi) {
  TempDir dir;
  const auto tokenizer = Tokenizer::learn({"3 left of 8", "a small 5 above a 1"});
  CheckpointInfo info;
  info.tokenizer = tokenizer;
  info.model = with_text(unet_config_by_name("tiny", 1, 8), tokenizer.vocab_size(), tokenizer.max_tokens());
  info.schedule.timesteps = 100;
  info.data = DataInfo{"test", 1, 8, 0};
  const std::string path = save_random_checkpoint(dir, "text", info, 3);
  RunningServer server({path}, {});
  auto c = server.client();
  const auto models = get(c, "/api/models")["models"];
  EXPECT_EQ(models[0]["text"]["max_words"], tokenizer.max_tokens() - 1);
  EXPECT_EQ(models[0]["text"]["vocabulary"].size(), tokenizer.words().size());

  // the native API: the library's images for the same prompt, negative prompt and guidance
  const json request{
      {"steps", 5},     {"n", 2}, {"seed", 7}, {"prompt", "3 left of 8"}, {"negative_prompt", "a small 5 above a 1"},
      {"guidance", 2.0}};
  const auto events = follow_events(c, post(c, "/api/generate", request, 202)["id"]);
  ASSERT_EQ(events.back()["type"], "done");
  const auto result = events.back()["result"];
  EXPECT_EQ(result["prompt"], "3 left of 8");
  const auto pipe = load_pipeline(path);
  auto g = default_generate_options(pipe);
  g.steps = 5;
  g.n = 2;
  g.seed = 7;
  g.prompts = {"3 left of 8"};
  g.negative_prompt = "a small 5 above a 1";
  g.guidance = 2.0;
  const auto expected = to_uint8(generate(pipe, g));
  for (int64_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(decode_png(result["images"][i]), expected[i]));

  // OpenAI's and A1111's prompts reach the model too; words it never read are a 400 naming the field
  post(c, "/v1/images/generations", {{"prompt", "8 left of 3"}, {"steps", 3}}, 200);
  post(c, "/sdapi/v1/txt2img", {{"prompt", "8 left of 3"}, {"negative_prompt", "1"}, {"steps", 3}}, 200);
  EXPECT_EQ(post(c, "/api/generate", {{"prompt", "a cat"}}, 400)["error"]["param"], "prompt");
  EXPECT_EQ(post(c, "/api/generate", {{"negative_prompt", "a cat"}}, 400)["error"]["param"], "negative_prompt");
  EXPECT_EQ(post(c, "/v1/images/generations", {{"prompt", "3 3 3 3 3 3 3 3 3"}}, 400)["error"]["param"], "prompt");
  EXPECT_EQ(post(c, "/sdapi/v1/txt2img", {{"prompt", "a dog"}}, 400)["error"]["param"], "prompt");
}

TEST(Serve, SameSeedSameImagesAndAnotherSeedOthers) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  auto images = [&](int seed) {
    const auto r = post(c, "/v1/images/generations", {{"n", 2}, {"seed", seed}, {"steps", 5}}, 200);
    return json{r["data"][0]["b64_json"], r["data"][1]["b64_json"]};
  };
  const auto a = images(1), b = images(1), other = images(2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, other);
  EXPECT_NE(a[0], a[1]);
}

TEST(Serve, OpenAiImagesApiAnswersAsTheOpenAiClientsExpect) {
  Fixture f;
  RunningServer server({f.plain, f.classes}, {});
  auto c = server.client();
  const auto models = get(c, "/v1/models");
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][1]["id"], "classes");

  const auto b64 = post(c, "/v1/images/generations",
                        {{"model", "plain"}, {"prompt", "anything"}, {"n", 2}, {"size", "8x8"}, {"steps", 5}}, 200);
  ASSERT_EQ(b64["data"].size(), 2u);
  EXPECT_TRUE(b64["created"].is_number_integer());
  const auto image = decode_png(b64["data"][0]["b64_json"]);
  EXPECT_EQ(image.sizes(), torch::IntArrayRef({1, 8, 8}));

  const auto url =
      post(c, "/v1/images/generations",
           {{"model", "classes"}, {"prompt", "a picture of class 1"}, {"response_format", "url"}, {"steps", 5}}, 200);
  const std::string data_url = url["data"][0]["url"];
  EXPECT_EQ(data_url.rfind("data:image/png;base64,", 0), 0u);
  EXPECT_EQ(decode_png(data_url).sizes(), torch::IntArrayRef({1, 8, 8}));

  auto error = post(c, "/v1/images/generations", {{"model", "plain"}, {"size", "1024x1024"}}, 400);
  EXPECT_EQ(error["error"]["param"], "size");
  EXPECT_EQ(error["error"]["type"], "invalid_request_error");
  error = post(c, "/v1/images/generations", {{"model", "classes"}, {"prompt", "a cat"}}, 400);
  EXPECT_EQ(error["error"]["param"], "prompt");
  error = post(c, "/v1/images/generations", {{"model", "dall-e-3"}}, 400);
  EXPECT_EQ(error["error"]["param"], "model");
  error = post(c, "/v1/images/generations", {{"model", "plain"}, {"response_format", "jpeg"}}, 400);
  EXPECT_EQ(error["error"]["param"], "response_format");
}

TEST(Serve, Automatic1111ApiAnswersWithItsFieldNames) {
  Fixture f;
  RunningServer server({f.plain, f.classes}, {});
  auto c = server.client();
  const auto samplers = get(c, "/sdapi/v1/samplers");
  ASSERT_EQ(samplers.size(), a1111_sampler_names().size());
  EXPECT_EQ(samplers[0]["name"], "DDIM");
  const auto sd_models = get(c, "/sdapi/v1/sd-models");
  ASSERT_EQ(sd_models.size(), 2u);
  EXPECT_EQ(sd_models[0]["title"], "plain");
  EXPECT_EQ(get(c, "/sdapi/v1/options")["sd_model_checkpoint"], "plain");

  const json body{{"prompt", "2"},
                  {"steps", 6},
                  {"sampler_name", "Euler"},
                  {"batch_size", 2},
                  {"n_iter", 2},
                  {"cfg_scale", 3},
                  {"width", 8},
                  {"height", 8},
                  {"seed", 5},
                  {"override_settings", {{"sd_model_checkpoint", "classes"}}}};
  const auto reply = post(c, "/sdapi/v1/txt2img", body, 200);
  ASSERT_EQ(reply["images"].size(), 4u);
  EXPECT_EQ(reply["parameters"], body);
  const auto info = json::parse(reply["info"].get<std::string>());
  EXPECT_EQ(info["seed"], 5);
  EXPECT_EQ(info["sampler"], "euler");
  EXPECT_EQ(info["sd_model_name"], "classes");
  EXPECT_EQ(decode_png(reply["images"][3]).sizes(), torch::IntArrayRef({1, 8, 8}));

  auto error = post(c, "/sdapi/v1/txt2img", {{"sampler_name", "LMS Karras"}}, 400);
  EXPECT_EQ(error["error"]["param"], "sampler_name");
  error = post(c, "/sdapi/v1/txt2img", {{"width", 512}}, 400);
  EXPECT_EQ(error["error"]["param"], "width");
  const auto progress = get(c, "/sdapi/v1/progress");
  EXPECT_TRUE(progress.contains("progress") && progress.contains("eta_relative") && progress.contains("state"));
}

TEST(Serve, BadRequestsAreRefusedWithTheFieldNamed) {
  Fixture f;
  ServeOptions options;
  options.max_body_bytes = 4096;
  options.limits.max_images = 8;
  options.limits.max_network_calls = 200;
  RunningServer server({f.plain, f.classes}, options);
  auto c = server.client();
  const std::vector<std::pair<json, std::string>> cases{
      {{{"n", "4"}}, "n"},                              // a wrong type
      {{{"n", 0}}, "n"},                                // out of range
      {{{"n", 9}}, "n"},                                // above the server's limit
      {{{"steps", 101}}, "steps"},                      // more than T
      {{{"n", 8}, {"steps", 50}}, "steps"},             // n × steps above the limit
      {{{"eta", 0.5}, {"sampler", "heun"}}, "eta"},     // η without DDIM
      {{{"eta", 2}}, "eta"},                            // η outside [0, 1]
      {{{"sampler", "plms"}}, "sampler"},               // an unknown sampler
      {{{"spacing", "odd"}}, "spacing"},                // an unknown spacing
      {{{"model", "nothing"}}, "model"},                // an unknown model
      {{{"class", 1}}, "class"},                        // a class for an unconditional model
      {{{"model", "classes"}, {"class", 3}}, "class"},  // a class the model does not have
      {{{"guidance", 2}}, "guidance"},                  // guidance for an unconditional model
      {{{"seed", 1.5}}, "seed"},                        // not an integer
      {{{"stepz", 10}}, "stepz"},                       // an unknown field
      {json::array(), "body"},                          // not an object
  };
  for (const auto& [body, field] : cases) {
    const auto error = post(c, "/api/generate", body, 400);
    EXPECT_EQ(error["error"]["param"], field) << body.dump() << " → " << error.dump();
  }
  auto res = c.Post("/api/generate", "{\"n\": ", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_EQ(json::parse(res->body)["error"]["param"], "body");
  res = c.Post("/api/generate", std::string(8192, ' '), "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_TRUE(json::parse(res->body).contains("error"));
  res = c.Get("/no/such/route");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_TRUE(json::parse(res->body).contains("error"));
  get(c, "/api/jobs/0123456789abcdef", 404);
  EXPECT_EQ(c.Delete("/api/jobs/0123456789abcdef")->status, 404);
  // a multipart body the HTTP layer cannot split into parts
  res = c.Post("/v1/images/edits", "--XYZ\r\nno headers and no end", "multipart/form-data; boundary=XYZ");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  const auto garbled = json::parse(res->body);
  EXPECT_EQ(garbled["error"]["param"], "body");
  EXPECT_NE(garbled["error"]["message"].get<std::string>().find("multipart"), std::string::npos);
}

TEST(Serve, TheApiKeyIsWantedOnEveryApiRoute) {
  Fixture f;
  ServeOptions options;
  options.api_key = "sesame";
  RunningServer server({f.plain}, options);
  auto anonymous = server.client();
  EXPECT_EQ(anonymous.Get("/")->status, 200);  // the page asks for the key itself
  EXPECT_EQ(anonymous.Get("/api/health")->status, 200);
  for (const char* path : {"/api/models", "/v1/models", "/sdapi/v1/sd-models"}) {
    EXPECT_EQ(anonymous.Get(path)->status, 401) << path;
  }
  EXPECT_EQ(anonymous.Post("/api/generate", "{}", "application/json")->status, 401);
  auto wrong = server.client("open");
  EXPECT_EQ(json::parse(wrong.Get("/api/models")->body)["error"]["message"], "wrong API key");
  auto right = server.client("sesame");
  EXPECT_EQ(right.Get("/api/models")->status, 200);
  post(right, "/api/generate", {{"steps", 2}}, 202);
}

TEST(Serve, ACancelledJobStopsAtItsNextStep) {
  TempDir dir;
  // a model slow enough that the job is still running when the cancel arrives
  const auto path = write_checkpoint(dir, "slow", "mnist", 28, 0, 1000);
  RunningServer server({path}, {});
  auto c = server.client();
  const std::string id = post(c, "/api/generate", {{"n", 16}, {"steps", 1000}, {"sampler", "ddpm"}}, 202)["id"];
  for (int i = 0; i < 600 && get(c, "/api/jobs/" + id)["step"].is_null(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const auto cancelled = c.Delete(("/api/jobs/" + id).c_str());
  ASSERT_TRUE(cancelled);
  EXPECT_EQ(cancelled->status, 200);
  const auto events = follow_events(c, id);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["type"], "cancelled");
  EXPECT_LT(events.size(), 200u);  // far fewer than the 1000 steps
  EXPECT_EQ(get(c, "/api/jobs/" + id)["state"], "cancelled");
  EXPECT_TRUE(get(c, "/api/health")["running"].is_null());
}

TEST(Serve, AFullQueueAnswers429AndAClientThatLeavesCancelsItsJob) {
  TempDir dir;
  const auto path = write_checkpoint(dir, "slow", "mnist", 28, 0, 1000);
  ServeOptions options;
  options.max_queue = 1;
  RunningServer server({path}, options);
  auto c = server.client();
  const json slow{{"n", 16}, {"steps", 1000}, {"sampler", "ddpm"}};
  const std::string running = post(c, "/api/generate", slow, 202)["id"];
  // the worker takes it from the queue before the next one is asked for (one may wait)
  for (int i = 0; i < 600 && get(c, "/api/health")["running"] != running; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string waiting = post(c, "/api/generate", slow, 202)["id"];
  const auto full = c.Post("/api/generate", slow.dump(), "application/json");
  ASSERT_TRUE(full);
  EXPECT_EQ(full->status, 429);
  EXPECT_FALSE(full->get_header_value("Retry-After").empty());
  // A queued job cancelled ends at once.
  EXPECT_EQ(c.Delete(("/api/jobs/" + waiting).c_str())->status, 200);
  EXPECT_EQ(get(c, "/api/jobs/" + waiting)["state"], "cancelled");
  EXPECT_EQ(c.Delete(("/api/jobs/" + running).c_str())->status, 200);
  for (int i = 0; i < 200 && !get(c, "/api/health")["running"].is_null(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // A synchronous request whose client gives up: its job is cancelled, not left to run.
  auto impatient = server.client();
  impatient.set_read_timeout(1, 0);
  EXPECT_FALSE(impatient.Post("/v1/images/generations", slow.dump(), "application/json"));
  bool idle = false;
  for (int i = 0; i < 100 && !idle; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    idle = get(c, "/api/health")["running"].is_null();
  }
  EXPECT_TRUE(idle) << "the job of a client that left still runs";
}

namespace {

// A [C, S, S] uint8 test image as PNG bytes: a bright square on dark.
std::string square_png(int64_t channels, int64_t size) {
  auto image = torch::full({channels, size, size}, 30, torch::kUInt8);
  image.narrow(1, size / 4, size / 2).narrow(2, size / 4, size / 2).fill_(220);
  return encode_png(image);
}

}  // namespace

TEST(Serve, EditsNoiseThenDenoiseAsTheLibraryDoes) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  const auto png = square_png(1, 8);
  const std::string id = post(c, "/api/edit",
                              {{"kind", "denoise"},
                               {"image", base64_encode(png)},
                               {"strength", 0.3},
                               {"steps", 5},
                               {"n", 2},
                               {"seed", 9},
                               {"preview_every", 2}},
                              202)["id"];
  const auto events = follow_events(c, id);
  ASSERT_EQ(events.back()["type"], "done");
  const auto result = events.back()["result"];
  ASSERT_EQ(result["psnr"].size(), 2u);
  ASSERT_EQ(result["images"].size(), 2u);
  int64_t steps = 0;
  for (const auto& e : events) steps += e["type"] == "step";
  EXPECT_EQ(steps, 5);

  const auto pipe = load_pipeline(f.plain);
  const auto x0 = from_uint8(decode_image_u8(png, "square", 1, 8)).unsqueeze(0).expand({2, -1, -1, -1}).contiguous();
  auto gen = at::detail::createCPUGenerator(9);
  SamplerConfig ddim;
  ddim.spacing = pipe.info().sampling.spacing;
  const auto sampler = make_sampler(ddim, pipe.diffusion.schedule());
  const auto expected = noise_and_denoise(pipe.diffusion, *sampler, make_unconditional_denoiser(pipe), x0, 29, 5,
                                          pipe.info().sampling.clip_x0, gen);
  EXPECT_EQ(result["t"], expected.t);  // the first of 5 leading steps on [0, round(0.3 · 100) − 1]
  const auto expected_u8 = to_uint8(expected.result.clamp(-1, 1));
  for (int64_t i = 0; i < 2; ++i) EXPECT_TRUE(torch::equal(decode_png(result["images"][i]), expected_u8[i]));
  const auto p = psnr(expected.result.clamp(-1, 1), x0);
  EXPECT_NEAR(result["psnr"][1].get<double>(), p[1].item<double>(), 1e-4);
}

TEST(Serve, InpaintingKeepsTheKnownPixelsInEveryApi) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  const auto png = square_png(1, 8);
  const auto input = decode_image_u8(png, "square", 1, 8);
  // the right half is the hole: white in the native and A1111 masks, transparent in OpenAI's
  auto white_right = torch::zeros({1, 8, 8}, torch::kUInt8);
  white_right.narrow(2, 4, 4).fill_(255);
  auto transparent_right = torch::full({4, 8, 8}, 255, torch::kUInt8);
  transparent_right[3].narrow(1, 4, 4).fill_(0);
  auto keeps_the_left_half = [&](const std::string& b64) {
    const auto out = decode_png(b64);
    EXPECT_TRUE(torch::equal(out.narrow(2, 0, 4), input.narrow(2, 0, 4))) << "the known pixels changed";
    EXPECT_FALSE(torch::equal(out.narrow(2, 4, 4), input.narrow(2, 4, 4))) << "the hole was not filled";
  };
  const auto native = native_inpainting(c, png, white_right);
  ASSERT_EQ(native["type"], "done") << native.dump();
  keeps_the_left_half(native["result"]["images"][0]);

  httplib::MultipartFormDataItems parts{{"image", png, "image.png", "image/png"},
                                        {"mask", encode_png(transparent_right), "mask.png", "image/png"},
                                        {"steps", "5", "", ""},
                                        {"n", "2", "", ""}};
  const auto openai = c.Post("/v1/images/edits", parts);
  ASSERT_TRUE(openai);
  ASSERT_EQ(openai->status, 200) << openai->body;
  const auto data = json::parse(openai->body)["data"];
  ASSERT_EQ(data.size(), 2u);
  keeps_the_left_half(data[1]["b64_json"]);

  const auto a1111 = post(c, "/sdapi/v1/img2img",
                          {{"init_images", {"data:image/png;base64," + base64_encode(png)}},
                           {"mask", base64_encode(encode_png(white_right))},
                           {"steps", 5},
                           {"sampler_name", "DDIM"}},
                          200);
  ASSERT_EQ(a1111["images"].size(), 1u);
  keeps_the_left_half(a1111["images"][0]);
  EXPECT_FALSE(a1111["parameters"].contains("init_images"));

  // Without a mask, OpenAI's edit and A1111's img2img noise and denoise.
  httplib::MultipartFormDataItems no_mask{{"image", png, "image.png", "image/png"}, {"strength", "0.2", "", ""}};
  const auto denoised = c.Post("/v1/images/edits", no_mask);
  ASSERT_TRUE(denoised);
  EXPECT_EQ(denoised->status, 200) << denoised->body;
}

TEST(Serve, AnInpaintingModelFillsTheHoleUnderItsCondition) {
  TempDir dir;
  const auto path = write_image_conditional_checkpoint(dir, "inpaint", ImageCondition{ImageConditionKind::inpaint, 4});
  RunningServer server({path}, {});
  auto c = server.client();
  EXPECT_EQ(get(c, "/api/models")["models"][0]["image_condition"]["kind"], "inpaint");
  const auto png = square_png(1, 8);
  auto white_right = torch::zeros({1, 8, 8}, torch::kUInt8);
  white_right.narrow(2, 4, 4).fill_(255);
  const auto done = native_inpainting(c, png, white_right);
  ASSERT_EQ(done["type"], "done") << done.dump();
  EXPECT_EQ(done["result"]["method"], "inpainting model");
  // the library's own: the model's sample under [x ⊙ m, m] from the same x_T, the known pixels pasted back
  const auto pipe = load_pipeline(path);
  const auto x0 = from_uint8(decode_image_u8(png, "square", 1, 8)).unsqueeze(0);
  auto known = torch::ones({1, 1, 8, 8});
  known.narrow(3, 4, 4).zero_();
  const auto drawn = ddim_sample_under(pipe, inpaint_condition(x0, known), 5, 1);
  const auto expected = to_uint8((known * x0 + (1 - known) * drawn).clamp(-1, 1))[0];
  EXPECT_TRUE(torch::equal(decode_png(done["result"]["images"][0]), expected));
}

TEST(Serve, ASuperResolutionModelUpscalesTheImagesBlockMeans) {
  TempDir dir;
  const auto path =
      write_image_conditional_checkpoint(dir, "sr", ImageCondition{ImageConditionKind::super_resolution, 2});
  RunningServer server({path}, {});
  auto c = server.client();
  const auto png = square_png(1, 8);
  const std::string id =
      post(c, "/api/edit", {{"kind", "upscale"}, {"image", base64_encode(png)}, {"steps", 5}, {"seed", 1}}, 202)["id"];
  const auto done = follow_events(c, id).back();
  ASSERT_EQ(done["type"], "done") << done.dump().substr(0, 300);
  EXPECT_EQ(done["result"]["method"], "super-resolution model");
  EXPECT_EQ(done["result"]["factor"], 2);
  // the library's own: the model's sample under c = bicubic(block means) from the same x_T
  const auto pipe = load_pipeline(path);
  const auto x0 = from_uint8(decode_image_u8(png, "square", 1, 8)).unsqueeze(0);
  const auto cond = super_resolution_condition(x0, 2);
  const auto drawn = ddim_sample_under(pipe, cond, 5, 1);
  EXPECT_TRUE(torch::equal(decode_png(done["result"]["images"][0]), to_uint8(drawn.clamp(-1, 1))[0]));
  EXPECT_TRUE(torch::equal(decode_png(done["result"]["bicubic"]), to_uint8(cond.clamp(-1, 1))[0]));
  EXPECT_NEAR(done["result"]["psnr_bicubic"].get<double>(), psnr(cond.clamp(-1, 1), x0)[0].item<double>(), 1e-4);

  // a model of another kind is refused before any work, naming the field
  Fixture f;
  RunningServer plain({f.plain}, {});
  auto p = plain.client();
  const auto refused = post(p, "/api/edit", {{"kind", "upscale"}, {"image", base64_encode(png)}}, 400);
  EXPECT_EQ(refused["error"]["param"], "kind");
  EXPECT_NE(refused["error"]["message"].get<std::string>().find("super-resolution model"), std::string::npos)
      << refused.dump();
}

TEST(Serve, InversionAndInterpolationAreTheLibrarysOwn) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  const auto pipe = load_pipeline(f.plain);
  const auto spacing = pipe.info().sampling.spacing;

  // DDIM inversion, then decoding: the library's ddim_invert and ddim_decode
  const auto png = square_png(1, 8);
  const std::string inverted =
      post(c, "/api/edit", {{"kind", "invert"}, {"image", base64_encode(png)}, {"steps", 10}}, 202)["id"];
  const auto round_trip = follow_events(c, inverted).back();
  ASSERT_EQ(round_trip["type"], "done") << round_trip.dump().substr(0, 300);
  const auto x0 = from_uint8(decode_image_u8(png, "square", 1, 8)).unsqueeze(0);
  const auto net = make_unconditional_denoiser(pipe);
  const auto decoded = ddim_decode(pipe.diffusion, net, ddim_invert(pipe.diffusion, net, x0, 10, spacing), 10, spacing);
  EXPECT_TRUE(torch::equal(decode_png(round_trip["result"]["images"][0]), to_uint8(decoded.clamp(-1, 1))[0]));
  EXPECT_EQ(post(c, "/api/edit", {{"kind", "invert"}, {"image", base64_encode(png)}, {"sampler", "euler"}},
                 400)["error"]["param"],
            "sampler");

  // Interpolation: its ends are the two seeds' images as generate() makes them with DDIM, η = 0.
  const std::string id =
      post(c, "/api/interpolate", {{"seed_a", 3}, {"seed_b", 4}, {"frames", 5}, {"steps", 10}}, 202)["id"];
  const auto done = follow_events(c, id).back();
  ASSERT_EQ(done["type"], "done");
  const auto frames = done["result"]["images"];
  ASSERT_EQ(frames.size(), 5u);
  EXPECT_EQ(done["result"]["lambda"], json({0.0, 0.25, 0.5, 0.75, 1.0}));
  auto g = default_generate_options(pipe);
  g.sampler.name = "ddim";
  g.steps = 10;
  g.n = 1;
  for (const auto& [seed, frame] : {std::pair<uint64_t, int>{3, 0}, {4, 4}}) {
    g.seed = seed;
    EXPECT_TRUE(torch::equal(decode_png(frames[frame]), to_uint8(generate(pipe, g))[0])) << "seed " << seed;
  }
  EXPECT_FALSE(torch::equal(decode_png(frames[2]), decode_png(frames[0])));
  EXPECT_EQ(post(c, "/api/interpolate", {{"frames", 1}}, 400)["error"]["param"], "frames");
}

TEST(Serve, MixturesOfTwoImagesAreTheLibrarysOwn) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  const auto a_png = square_png(1, 8);
  const auto b_png = encode_png(torch::full({1, 8, 8}, 128, torch::kUInt8));
  const std::string id = post(c, "/api/edit",
                              {{"kind", "mix"},
                               {"image", base64_encode(a_png)},
                               {"image_b", base64_encode(b_png)},
                               {"n", 3},
                               {"strength", 0.4},
                               {"steps", 8},
                               {"seed", 2}},
                              202)["id"];
  const auto done = follow_events(c, id).back();
  ASSERT_EQ(done["type"], "done") << done.dump().substr(0, 300);
  EXPECT_EQ(done["result"]["lambda"], json({0.0, 0.5, 1.0}));
  const auto pipe = load_pipeline(f.plain);
  SamplerConfig ddim;
  ddim.spacing = pipe.info().sampling.spacing;
  const auto sampler = make_sampler(ddim, pipe.diffusion.schedule());
  auto gen = at::detail::createCPUGenerator(2);
  const auto a = from_uint8(decode_image_u8(a_png, "a", 1, 8)), b = from_uint8(decode_image_u8(b_png, "b", 1, 8));
  const auto expected = denoise_mixtures(pipe.diffusion, *sampler, make_unconditional_denoiser(pipe), a, b, 3,
                                         done["result"]["t"].get<int64_t>(), 8, pipe.info().sampling.clip_x0, gen);
  for (int64_t k = 0; k < 3; ++k) {
    EXPECT_TRUE(torch::equal(decode_png(done["result"]["images"][k]), to_uint8(expected.clamp(-1, 1))[k])) << k;
  }
  EXPECT_EQ(post(c, "/api/edit", {{"kind", "mix"}, {"image", base64_encode(a_png)}}, 400)["error"]["param"], "image_b");
}

TEST(Serve, EditInputsAreCheckedBeforeAJobIsQueued) {
  Fixture f;
  RunningServer server({f.plain}, {});
  auto c = server.client();
  const auto image = base64_encode(square_png(1, 8));
  const std::vector<std::pair<json, std::string>> cases{
      {{{"image", "***"}}, "image"},                                                                 // not base64
      {{{"image", base64_encode("not an image")}}, "image"},                                         // not an image
      {{{"image", base64_encode(encode_png(torch::zeros({1, 1, 5000}, torch::kUInt8)))}}, "image"},  // too wide
      {{{"kind", "inpaint"}, {"image", image}}, "mask"},
      {{{"kind", "inpaint"}, {"image", image}, {"mask", base64_encode("not an image")}},
       "mask"},                                                            // inpainting wants a mask
      {{{"kind", "denoise"}, {"image", image}, {"mask", image}}, "mask"},  // a mask without inpainting
      {{{"kind", "blur"}, {"image", image}}, "kind"},
      {{{"image", image}, {"strength", 0}}, "strength"},
      {{{"strength", 0.5}}, "image"},  // no image
  };
  for (const auto& [body, field] : cases) {
    const auto error = post(c, "/api/edit", body, 400);
    EXPECT_EQ(error["error"]["param"], field) << body.dump().substr(0, 200) << " → " << error.dump();
  }
  EXPECT_EQ(post(c, "/sdapi/v1/img2img", {{"init_images", json::array()}}, 400)["error"]["param"], "init_images");
  const auto not_multipart = c.Post("/v1/images/edits", "{}", "application/json");
  ASSERT_TRUE(not_multipart);
  EXPECT_EQ(not_multipart->status, 400);
  EXPECT_TRUE(get(c, "/api/health")["running"].is_null());
}

TEST(Serve, Base64RoundTripsAndRefusesWhatIsNotBase64) {
  for (const std::string& s :
       std::vector<std::string>{"", "f", "fo", "foo", "foob", "fooba", "foobar", std::string("\0\xff\x80", 3)}) {
    EXPECT_EQ(base64_decode(base64_encode(s)), s);
  }
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");  // RFC 4648's test vectors
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_decode("data:image/png;base64,Zm9v"), "foo");
  EXPECT_THROW(base64_decode("Zm9"), std::invalid_argument);
  EXPECT_THROW(base64_decode("Zm9v!"), std::invalid_argument);
  EXPECT_THROW(base64_decode("Z=9v"), std::invalid_argument);
}

TEST(Serve, ModelNamesAndPromptClasses) {
  EXPECT_EQ(model_name_for("runs/mnist/checkpoint.safetensors"), "mnist");
  EXPECT_EQ(model_name_for("a.b/checkpoint.safetensors"), "a.b");
  EXPECT_EQ(model_name_for("models/flowers.safetensors"), "flowers");
  EXPECT_EQ(model_name_for("pipelines/ddpm-cifar10/"), "ddpm-cifar10");
  const std::vector<std::string> digits{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
  EXPECT_EQ(class_in_prompt("a handwritten 7", digits), 7);
  EXPECT_EQ(class_in_prompt("the digit 13", digits), -1);
  const std::vector<std::string> cifar{"airplane", "automobile", "bird", "cat"};
  EXPECT_EQ(class_in_prompt("A Cat, sitting", cifar), 3);
  EXPECT_EQ(class_in_prompt("a catalogue", cifar), -1);
}

// The command: SIGTERM stops it, exit status 0.
TEST(Serve, TheCommandStopsOnSigtermWithStatusZero) {
  Fixture f;
  const std::string log = f.dir / "serve.log";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    dup2(fd, 1);
    execl(DIFFUSE_BINARY, DIFFUSE_BINARY, "--threads", "1", "serve", "--checkpoint", f.plain.c_str(), "--port", "0",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  int port = 0;
  for (int i = 0; i < 300 && port == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(log);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto at = text.find("serving on http://127.0.0.1:");
    if (at != std::string::npos) port = std::atoi(text.c_str() + at + 28);
  }
  ASSERT_GT(port, 0) << "the server did not say where it listens";
  httplib::Client c("127.0.0.1", port);
  const auto health = c.Get("/api/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}
