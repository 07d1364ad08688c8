// What a client may ask of the server, read from the three APIs' JSON bodies (the native one,
// OpenAI's images API, AUTOMATIC1111's /sdapi/v1) into one request, every field checked: a wrong
// type, an unknown value or one out of range is a RequestError naming the field.
#pragma once

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "diffuse/diffusion/image_condition.h"
#include "diffuse/sampling/sampler.h"
#include "diffuse/text/tokenizer.h"

namespace diffuse::serve {

struct RequestError : std::invalid_argument {
  RequestError(std::string field, const std::string& message)
      : std::invalid_argument(field + ": " + message), field(std::move(field)) {}
  std::string field;
};

// What the server allows per request.
struct RequestLimits {
  int64_t max_images = 64;                // n
  int64_t max_network_calls = 64 * 1000;  // n × steps
};

// The model a request may name, as the server describes it.
struct ModelFacts {
  std::string name;
  int64_t timesteps = 1000;
  int64_t channels = 1, image_size = 28;
  int64_t num_classes = 0;
  std::vector<std::string> class_names;  // num_classes entries
  SamplerConfig default_sampler;         // the checkpoint's spacing and variance
  std::optional<Tokenizer> tokenizer;    // text-conditional models: the checkpoint's
  std::optional<ImageCondition> image_condition;  // image-conditional models: inpainting or super-resolution
};

struct GenerateRequest {
  std::string model;
  SamplerConfig sampler;
  int64_t steps = 0;  // resolved: S ≥ 1
  int64_t n = 1;
  uint64_t seed = 0;
  double guidance = 0.0;      // w of ε̃ = (1 + w) ε(x, y) − w ε(x, ∅)
  int64_t class_label = -1;   // −1: none (∅)
  std::string prompt;         // text-conditional models ("": ∅, the empty prompt)
  std::string negative_prompt;  // takes ∅'s place in guidance
  int64_t preview_every = 0;  // steps between preview events (0: none)
};

// An edit of a given image (edit/): noised to the timestep of `strength` and denoised (SDEdit),
// or its masked pixels filled in (RePaint).
struct EditRequest {
  std::string model;
  std::string kind = "denoise";  // denoise | inpaint | invert (DDIM inversion, then decoding) | mix | upscale
  SamplerConfig sampler;
  int64_t steps = 0;      // resolved: S over [0, t] (denoise) or the whole chain (inpaint)
  int64_t t = 0;          // denoise: the 0-based timestep the image is noised to
  double strength = 0.5;  // denoise: t = round(strength · T) − 1
  int64_t resample = 0;   // inpaint: RePaint's extra go-back-and-step rounds
  int64_t n = 1;          // results, each with its own noise
  uint64_t seed = 0;
  int64_t preview_every = 0;
  std::string image;                   // the image file's bytes (PNG, JPEG, …)
  std::string mask;                    // inpaint: the mask file's bytes
  std::string image_b;                 // mix: the second image's bytes ((1 − λ) a + λ b, edit/mix.h)
  bool mask_alpha_marks_hole = false;  // OpenAI's masks: transparent = fill in (else white = fill in)
};

// POST /api/edit: {"model", "kind", "image" (base64), "mask" (base64; white = fill in), "strength",
// "steps", "sampler", "eta", "resample", "n", "seed", "preview_every", "image_b" (mix: the second
// image; n is the number of mixtures, λ = k/(n − 1)); kind upscale: a super-resolution model's
// sample under the image's f×f block means}.
EditRequest native_edit_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                                const RequestLimits& limits);
// POST /v1/images/edits (multipart): the parts "image", "mask" (transparent = fill in; without a
// mask the image is noised and denoised), and the text fields "model", "n", "size",
// "response_format", "seed", "strength", "steps".
EditRequest openai_edit_request(const std::map<std::string, std::string>& fields, const std::string& image,
                                const std::string& mask, const std::vector<ModelFacts>& models,
                                const RequestLimits& limits);
// POST /sdapi/v1/img2img: {"init_images": [base64], "mask" (base64; white = fill in),
// "denoising_strength", "steps", "sampler_name", "seed", "batch_size", "n_iter", "width", "height",
// "override_settings"}.
EditRequest a1111_edit_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                               const RequestLimits& limits);

// Generations along the great circle between two seeds' x_T (edit/interpolate.h's slerp), each
// decoded by DDIM with η = 0: the first and last frames are the two seeds' images.
struct InterpolateRequest {
  std::string model;
  uint64_t seed_a = 0, seed_b = 1;
  int64_t frames = 8;
  int64_t steps = 50;
  int64_t preview_every = 0;
};

// POST /api/interpolate: {"model", "seed_a", "seed_b", "frames" (2 … max_images), "steps", "preview_every"}.
InterpolateRequest native_interpolate_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                                              const RequestLimits& limits);

// The model a body names (field `field`), or the only one served when it names none.
const ModelFacts& model_named(const std::vector<ModelFacts>& models, const nlohmann::json& body,
                              const std::string& field);

// POST /api/generate: {"model", "sampler", "steps", "eta", "spacing", "guidance", "class", "prompt",
// "negative_prompt", "seed", "n", "preview_every"}, all optional.
GenerateRequest native_generate_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                                        const RequestLimits& limits);
// POST /v1/images/generations: {"model", "prompt", "n", "size", "response_format", "seed"}; the
// prompt names a class of a class-conditional model (a class name, or its index), is the prompt
// of a text-conditional one, and is otherwise ignored. Extra fields: "steps", "sampler", "guidance".
GenerateRequest openai_generate_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                                        const RequestLimits& limits);
// POST /sdapi/v1/txt2img: {"prompt", "negative_prompt" (text-conditional models), "seed" (−1: random), "sampler_name",
// "steps", "cfg_scale" (A1111's s = 1 + w), "width", "height", "batch_size", "n_iter", "eta", "override_settings":
// {"sd_model_checkpoint"}}.
GenerateRequest a1111_generate_request(const nlohmann::json& body, const std::vector<ModelFacts>& models,
                                       const RequestLimits& limits);

// The sampler names of AUTOMATIC1111's API and ours: "DDIM" ↔ ddim, "Euler" ↔ euler, "Heun" ↔
// heun, "DPM++ 2M" ↔ dpm++2m, "DDPM" ↔ ddpm.
std::vector<std::pair<std::string, std::string>> a1111_sampler_names();

// The class a prompt names: a class name or index as a whole word ("a 3", "cat"); −1 for none.
int64_t class_in_prompt(const std::string& prompt, const std::vector<std::string>& class_names);

}  // namespace diffuse::serve
