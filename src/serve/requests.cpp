#include "diffuse/serve/requests.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <random>
#include <set>

#include "diffuse/edit/noise_and_denoise.h"
#include "diffuse/schedule/timestep_spacing.h"
#include "diffuse/serve/base64.h"

namespace diffuse::serve {

using nlohmann::json;

namespace {

void require_object(const json& body) {
  if (!body.is_object()) throw RequestError("body", "must be a JSON object");
}

// Refuses fields the native API does not know (a typo would otherwise be ignored silently).
void refuse_unknown_fields(const json& body, const std::set<std::string>& known) {
  for (const auto& [key, value] : body.items()) {
    if (!known.count(key)) throw RequestError(key, "unknown field");
  }
}

bool given(const json& body, const char* name) { return body.contains(name) && !body.at(name).is_null(); }

int64_t integer_field(const json& body, const char* name, int64_t fallback, int64_t lo, int64_t hi) {
  if (!given(body, name)) return fallback;
  const auto& v = body.at(name);
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>())) {
    throw RequestError(name, "must be an integer");
  }
  const double x = v.get<double>();
  if (x < static_cast<double>(lo) || x > static_cast<double>(hi)) {
    throw RequestError(name, "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump());
  }
  return v.is_number_integer() ? v.get<int64_t>() : static_cast<int64_t>(x);
}

double number_field(const json& body, const char* name, double fallback, double lo, double hi) {
  if (!given(body, name)) return fallback;
  const auto& v = body.at(name);
  if (!v.is_number()) throw RequestError(name, "must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi) {
    throw RequestError(name, "must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump());
  }
  return x;
}

std::string string_field(const json& body, const char* name, const std::string& fallback) {
  if (!given(body, name)) return fallback;
  if (!body.at(name).is_string()) throw RequestError(name, "must be a string");
  return body.at(name).get<std::string>();
}

uint64_t random_seed() {
  static std::mutex mutex;
  static std::mt19937_64 gen{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mutex);
  return gen() >> 1;  // kept below 2^63: every JSON reader holds it exactly as an integer
}

uint64_t seed_field(const json& body, const char* name) {
  if (!given(body, name)) return random_seed();
  const int64_t seed = integer_field(body, name, 0, -1, INT64_MAX);
  return seed < 0 ? random_seed() : static_cast<uint64_t>(seed);
}

std::string sampler_field(const json& body, const char* name, const std::string& fallback) {
  const auto sampler = string_field(body, name, fallback);
  const auto names = sampler_names();
  if (std::find(names.begin(), names.end(), sampler) == names.end()) {
    std::string list;
    for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
    throw RequestError(name, "unknown sampler '" + sampler + "' (one of " + list + ")");
  }
  return sampler;
}

// S from the request, the sampler's default where absent; and n × S (× 2 with guidance) within
// the limit.
void resolve_steps(GenerateRequest& r, const json& body, const char* steps_field, const ModelFacts& model,
                   const RequestLimits& limits) {
  const int64_t requested = integer_field(body, steps_field, 0, 1, model.timesteps);
  r.steps = sampling_steps(r.sampler.name, requested, model.timesteps);
  const int64_t calls_per_step = r.guidance > 0 && r.class_label >= 0 ? 2 : 1;
  if (r.n * r.steps * calls_per_step > limits.max_network_calls) {
    throw RequestError(steps_field, "n × steps = " + std::to_string(r.n * r.steps * calls_per_step) +
                                        " network calls exceeds this server's limit of " +
                                        std::to_string(limits.max_network_calls));
  }
}

void check_eta(const GenerateRequest& r, const json& body, const char* name) {
  if (r.sampler.eta != 0.0 && r.sampler.name != "ddim") throw RequestError(name, "η applies to the ddim sampler only");
  (void)body;
}

int64_t class_field(const json& body, const char* name, const ModelFacts& model) {
  if (!given(body, name)) return -1;
  if (model.num_classes == 0) throw RequestError(name, "model '" + model.name + "' is not class-conditional");
  const auto& v = body.at(name);
  if (v.is_string()) {
    const auto& names = model.class_names;
    const auto it = std::find(names.begin(), names.end(), v.get<std::string>());
    if (it == names.end()) throw RequestError(name, "no class named " + v.dump() + " in model '" + model.name + "'");
    return it - names.begin();
  }
  return integer_field(body, name, -1, 0, model.num_classes - 1);
}

// OpenAI's `size` ("28x28": the model's own) and `response_format`.
void check_openai_size_and_format(const json& body, const ModelFacts& model) {
  const auto size = string_field(body, "size", "");
  const auto own = std::to_string(model.image_size) + "x" + std::to_string(model.image_size);
  if (!size.empty() && size != own) throw RequestError("size", "model '" + model.name + "' makes " + own + " images");
  const auto format = string_field(body, "response_format", "b64_json");
  if (format != "b64_json" && format != "url") throw RequestError("response_format", "must be b64_json or url");
}

// A1111's `sampler_name` (or the older `sampler_index`) as our sampler's name.
std::string a1111_sampler(const json& body, const std::string& fallback) {
  const auto given_name = string_field(body, "sampler_name", "");
  const auto name = given_name.empty() ? string_field(body, "sampler_index", fallback) : given_name;
  for (const auto& [a1111, ours] : a1111_sampler_names())
    if (a1111 == name) return ours;
  throw RequestError("sampler_name", "unknown sampler '" + name + "' (GET /sdapi/v1/samplers)");
}

// A1111's `width` and `height` (the model's own) and its `batch_size` × `n_iter` images.
int64_t a1111_images(const json& body, const ModelFacts& model, const RequestLimits& limits) {
  for (const char* side : {"width", "height"}) {
    const int64_t v = integer_field(body, side, model.image_size, 1, 1 << 16);
    if (v != model.image_size) {
      throw RequestError(side, "model '" + model.name + "' makes " + std::to_string(model.image_size) + "×" +
                                   std::to_string(model.image_size) + " images");
    }
  }
  const int64_t n = integer_field(body, "batch_size", 1, 1, limits.max_images) *
                    integer_field(body, "n_iter", 1, 1, limits.max_images);
  if (n > limits.max_images) {
    throw RequestError("batch_size", "batch_size × n_iter must be at most " + std::to_string(limits.max_images));
  }
  return n;
}

}  // namespace

const ModelFacts& model_named(const std::vector<ModelFacts>& models, const json& body, const std::string& field) {
  if (models.empty()) throw RequestError(field, "this server serves no model");
  if (!given(body, field.c_str())) return models.front();
  if (!body.at(field).is_string()) throw RequestError(field, "must be a string");
  const auto name = body.at(field).get<std::string>();
  for (const auto& m : models)
    if (m.name == name) return m;
  std::string list;
  for (const auto& m : models) list += (list.empty() ? "" : ", ") + m.name;
  throw RequestError(field, "no model named '" + name + "' (served: " + list + ")");
}

namespace {

// The model A1111's `override_settings.sd_model_checkpoint` names (the first where none).
const ModelFacts& a1111_model(const json& body, const std::vector<ModelFacts>& models) {
  const json no_settings = json::object();
  const auto& settings = given(body, "override_settings") ? body.at("override_settings") : no_settings;
  if (!settings.is_object()) throw RequestError("override_settings", "must be a JSON object");
  return model_named(models, settings, "sd_model_checkpoint");
}

// A text-conditional model's prompt from `field`: every word in its tokenizer's vocabulary, no
// longer than its rows. Refused on a model that reads no text.
std::string text_prompt_field(const json& body, const char* field, const ModelFacts& model) {
  const auto prompt = string_field(body, field, "");
  if (prompt.empty()) return prompt;
  if (!model.tokenizer) throw RequestError(field, "model '" + model.name + "' reads no text");
  const auto& tokenizer = *model.tokenizer;
  if (tokenizer.truncated(prompt)) {
    throw RequestError(field, "has " + std::to_string(Tokenizer::split_words(prompt).size()) + " words; model '" +
                                  model.name + "' reads " + std::to_string(tokenizer.max_tokens() - 1));
  }
  if (const auto unknown = tokenizer.unknown_words(prompt); !unknown.empty()) {
    throw RequestError(field, "the word '" + unknown.front() + "' is not in model '" + model.name +
                                  "''s vocabulary of " + std::to_string(tokenizer.words().size()) + " words");
  }
  return prompt;
}

}  // namespace

GenerateRequest native_generate_request(const json& body, const std::vector<ModelFacts>& models,
                                        const RequestLimits& limits) {
  require_object(body);
  refuse_unknown_fields(body, {"model", "sampler", "steps", "eta", "spacing", "guidance", "class", "prompt",
                               "negative_prompt", "seed", "n", "preview_every"});
  const auto& model = model_named(models, body, "model");
  GenerateRequest r;
  r.model = model.name;
  r.sampler = model.default_sampler;
  r.sampler.name = sampler_field(body, "sampler", "ddim");
  if (given(body, "spacing")) {
    try {
      r.sampler.spacing = timestep_spacing_from_string(string_field(body, "spacing", ""));
    } catch (const RequestError&) {
      throw;
    } catch (const std::invalid_argument& e) {
      throw RequestError("spacing", e.what());
    }
  }
  r.sampler.eta = number_field(body, "eta", 0.0, 0.0, 1.0);
  check_eta(r, body, "eta");
  r.n = integer_field(body, "n", 1, 1, limits.max_images);
  r.seed = seed_field(body, "seed");
  r.class_label = class_field(body, "class", model);
  r.prompt = text_prompt_field(body, "prompt", model);
  r.negative_prompt = text_prompt_field(body, "negative_prompt", model);
  r.guidance = number_field(body, "guidance", 0.0, 0.0, 100.0);
  if (r.guidance > 0 && model.num_classes == 0 && !model.tokenizer) {
    throw RequestError("guidance", "model '" + model.name + "' is not class- or text-conditional");
  }
  resolve_steps(r, body, "steps", model, limits);
  r.preview_every = integer_field(body, "preview_every", 0, 0, r.steps);
  return r;
}

int64_t class_in_prompt(const std::string& prompt, const std::vector<std::string>& class_names) {
  // Whole words, lower-cased: "digit 3" names class 3, "13" names none of 0–9.
  std::vector<std::string> words;
  std::string word;
  for (const char c : prompt + " ") {
    if (std::isalnum(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      words.push_back(word);
      word.clear();
    }
  }
  for (const auto& w : words) {
    for (size_t k = 0; k < class_names.size(); ++k) {
      std::string name = class_names[k];
      std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
      if (w == name || w == std::to_string(k)) return static_cast<int64_t>(k);
    }
  }
  return -1;
}

GenerateRequest openai_generate_request(const json& body, const std::vector<ModelFacts>& models,
                                        const RequestLimits& limits) {
  require_object(body);
  const auto& model = model_named(models, body, "model");
  GenerateRequest r;
  r.model = model.name;
  r.sampler = model.default_sampler;
  r.sampler.name = sampler_field(body, "sampler", "dpm++2m");
  const auto prompt = string_field(body, "prompt", "");
  if (model.tokenizer) r.prompt = text_prompt_field(body, "prompt", model);
  if (model.num_classes > 0 && !prompt.empty()) {
    r.class_label = class_in_prompt(prompt, model.class_names);
    if (r.class_label < 0) {
      std::string list;
      for (const auto& n : model.class_names) list += (list.empty() ? "" : ", ") + n;
      throw RequestError("prompt", "names no class of model '" + model.name + "' (" + list + ")");
    }
  }
  r.n = integer_field(body, "n", 1, 1, limits.max_images);
  check_openai_size_and_format(body, model);
  r.seed = seed_field(body, "seed");
  const bool conditioned = r.class_label >= 0 || !r.prompt.empty();
  r.guidance = conditioned ? number_field(body, "guidance", 3.0, 0.0, 100.0) : 0.0;
  resolve_steps(r, body, "steps", model, limits);
  return r;
}

std::vector<std::pair<std::string, std::string>> a1111_sampler_names() {
  return {{"DDIM", "ddim"}, {"Euler", "euler"}, {"Heun", "heun"}, {"DPM++ 2M", "dpm++2m"}, {"DDPM", "ddpm"}};
}

GenerateRequest a1111_generate_request(const json& body, const std::vector<ModelFacts>& models,
                                       const RequestLimits& limits) {
  require_object(body);
  const auto& model = a1111_model(body, models);
  GenerateRequest r;
  r.model = model.name;
  r.sampler = model.default_sampler;
  r.sampler.name = a1111_sampler(body, "DPM++ 2M");
  r.sampler.eta = r.sampler.name == "ddim" ? number_field(body, "eta", 0.0, 0.0, 1.0) : 0.0;
  r.n = a1111_images(body, model, limits);
  r.seed = seed_field(body, "seed");
  const auto prompt = string_field(body, "prompt", "");
  if (model.num_classes > 0 && !prompt.empty()) r.class_label = class_in_prompt(prompt, model.class_names);
  if (model.tokenizer) {
    r.prompt = text_prompt_field(body, "prompt", model);
    r.negative_prompt = text_prompt_field(body, "negative_prompt", model);
  }
  // A1111's ε = ε_u + s (ε_c − ε_u), ours (1 + w) ε_c − w ε_u: w = s − 1.
  const double cfg_scale = number_field(body, "cfg_scale", 7.0, 0.0, 101.0);
  r.guidance = r.class_label >= 0 || !r.prompt.empty() ? std::max(0.0, cfg_scale - 1.0) : 0.0;
  resolve_steps(r, body, "steps", model, limits);
  return r;
}

namespace {

std::string base64_field(const json& body, const char* name, bool required) {
  if (!given(body, name)) {
    if (required) throw RequestError(name, "is required");
    return {};
  }
  try {
    return base64_decode(string_field(body, name, ""));
  } catch (const RequestError&) {
    throw;
  } catch (const std::exception& e) {
    throw RequestError(name, e.what());
  }
}

// t from the strength, S on [0, t] (denoise) or [0, T) (inpaint), and the work within the limit.
void resolve_edit(EditRequest& r, const json& body, const char* strength_field, const char* steps_field,
                  const ModelFacts& model, const RequestLimits& limits) {
  const int64_t requested = integer_field(body, steps_field, 0, 1, model.timesteps);
  if (r.kind == "invert") {  // the whole chain, each way
    r.steps = integer_field(body, steps_field, std::min<int64_t>(50, model.timesteps), 1, model.timesteps);
  } else if (r.kind == "denoise" || r.kind == "mix") {
    r.strength = number_field(body, strength_field, r.strength, 0.0, 1.0);
    if (r.strength <= 0.0) throw RequestError(strength_field, "must be above 0");
    r.t = timestep_for_strength(r.strength, model.timesteps);
    const int64_t full = requested > 0 ? requested : r.sampler.name == "ddpm" ? model.timesteps : 50;
    r.steps = std::max<int64_t>(1, std::min<int64_t>(full, r.t + 1));
  } else {
    r.steps = sampling_steps(r.sampler.name, requested, model.timesteps);
  }
  const int64_t calls = r.n * r.steps * (1 + r.resample) * (r.kind == "invert" ? 2 : 1);
  if (calls > limits.max_network_calls) {
    throw RequestError(steps_field, "the edit's " + std::to_string(calls) +
                                        " network calls exceeds this server's limit of " +
                                        std::to_string(limits.max_network_calls));
  }
}

}  // namespace

EditRequest native_edit_request(const json& body, const std::vector<ModelFacts>& models, const RequestLimits& limits) {
  require_object(body);
  refuse_unknown_fields(body, {"model", "kind", "image", "mask", "strength", "steps", "sampler", "eta", "resample", "n",
                               "seed", "preview_every", "image_b"});
  const auto& model = model_named(models, body, "model");
  EditRequest r;
  r.model = model.name;
  r.kind = string_field(body, "kind", "denoise");
  if (r.kind != "denoise" && r.kind != "inpaint" && r.kind != "invert" && r.kind != "mix" && r.kind != "upscale") {
    throw RequestError("kind", "must be denoise, inpaint, invert, mix or upscale");
  }
  if (r.kind == "upscale" &&
      !(model.image_condition && model.image_condition->kind == ImageConditionKind::super_resolution)) {
    throw RequestError("kind", "upscale needs a super-resolution model (train --image-cond super-resolution); '" +
                                   model.name + "' is not one");
  }
  r.sampler = model.default_sampler;
  r.sampler.name = sampler_field(body, "sampler", "ddim");
  if (r.kind == "invert" && r.sampler.name != "ddim") throw RequestError("sampler", "inversion is DDIM's (η = 0)");
  r.sampler.eta = number_field(body, "eta", 0.0, 0.0, 1.0);
  if (r.sampler.eta != 0.0 && r.sampler.name != "ddim") throw RequestError("eta", "η applies to the ddim sampler only");
  r.image = base64_field(body, "image", true);
  r.mask = base64_field(body, "mask", r.kind == "inpaint");
  if (r.kind != "inpaint" && !r.mask.empty()) throw RequestError("mask", "a mask goes with kind inpaint");
  r.image_b = base64_field(body, "image_b", r.kind == "mix");
  if (r.kind != "mix" && !r.image_b.empty()) throw RequestError("image_b", "a second image goes with kind mix");
  r.resample = r.kind == "inpaint" ? integer_field(body, "resample", 0, 0, 20) : 0;
  r.n = integer_field(body, "n", 1, 1, r.kind == "invert" ? 1 : limits.max_images);  // inversion is deterministic
  r.seed = seed_field(body, "seed");
  resolve_edit(r, body, "strength", "steps", model, limits);
  r.preview_every = integer_field(body, "preview_every", 0, 0, 2 * r.steps * (1 + r.resample));
  return r;
}

InterpolateRequest native_interpolate_request(const json& body, const std::vector<ModelFacts>& models,
                                              const RequestLimits& limits) {
  require_object(body);
  refuse_unknown_fields(body, {"model", "seed_a", "seed_b", "frames", "steps", "preview_every"});
  const auto& model = model_named(models, body, "model");
  InterpolateRequest r;
  r.model = model.name;
  r.seed_a = static_cast<uint64_t>(integer_field(body, "seed_a", 0, 0, INT64_MAX));
  r.seed_b = static_cast<uint64_t>(integer_field(body, "seed_b", 1, 0, INT64_MAX));
  r.frames = integer_field(body, "frames", 8, 2, std::max<int64_t>(2, limits.max_images));
  r.steps = integer_field(body, "steps", std::min<int64_t>(50, model.timesteps), 1, model.timesteps);
  if (r.frames * r.steps > limits.max_network_calls) {
    throw RequestError("steps", "frames × steps = " + std::to_string(r.frames * r.steps) +
                                    " network calls exceeds this server's limit of " +
                                    std::to_string(limits.max_network_calls));
  }
  r.preview_every = integer_field(body, "preview_every", 0, 0, r.steps);
  return r;
}

EditRequest openai_edit_request(const std::map<std::string, std::string>& fields, const std::string& image,
                                const std::string& mask, const std::vector<ModelFacts>& models,
                                const RequestLimits& limits) {
  // The text fields as JSON, numbers parsed, so that the checks are those of the other routes.
  json body = json::object();
  for (const auto& [key, text] : fields) {
    const bool numeric = key == "n" || key == "seed" || key == "strength" || key == "steps";
    if (!numeric) {
      body[key] = text;
      continue;
    }
    try {
      body[key] = json::parse(text);
    } catch (const std::exception&) {
      throw RequestError(key, "must be a number, got '" + text + "'");
    }
  }
  const auto& model = model_named(models, body, "model");
  EditRequest r;
  r.model = model.name;
  r.sampler = model.default_sampler;
  r.sampler.name = "ddim";
  if (image.empty()) throw RequestError("image", "is required (a multipart file part)");
  r.image = image;
  r.mask = mask;
  r.mask_alpha_marks_hole = true;
  r.kind = mask.empty() ? "denoise" : "inpaint";
  r.n = integer_field(body, "n", 1, 1, limits.max_images);
  check_openai_size_and_format(body, model);
  r.seed = seed_field(body, "seed");
  resolve_edit(r, body, "strength", "steps", model, limits);
  return r;
}

EditRequest a1111_edit_request(const json& body, const std::vector<ModelFacts>& models, const RequestLimits& limits) {
  require_object(body);
  const auto& model = a1111_model(body, models);
  EditRequest r;
  r.model = model.name;
  r.sampler = model.default_sampler;
  r.sampler.name = a1111_sampler(body, "DDIM");
  if (!given(body, "init_images") || !body.at("init_images").is_array() || body.at("init_images").empty()) {
    throw RequestError("init_images", "must be a list holding one base64 image");
  }
  r.image = base64_field(json{{"init_images", body.at("init_images").at(0)}}, "init_images", true);
  r.mask = base64_field(body, "mask", false);
  r.kind = r.mask.empty() ? "denoise" : "inpaint";
  r.n = a1111_images(body, model, limits);
  r.seed = seed_field(body, "seed");
  r.strength = 0.75;  // A1111's default denoising_strength
  resolve_edit(r, body, "denoising_strength", "steps", model, limits);
  return r;
}

}  // namespace diffuse::serve
