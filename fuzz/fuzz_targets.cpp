#include "fuzz_targets.h"

#include <c10/util/Exception.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/checkpoint/diffusers.h"
#include "diffuse/data/dataset.h"
#include "diffuse/data/idx.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/text/tokenizer.h"
#ifdef DIFFUSE_FUZZ_SERVE
#include "diffuse/serve/base64.h"
#include "diffuse/serve/requests.h"
#endif

namespace diffuse::fuzz {

namespace {

// Runs `f`; refusals (exceptions) are the expected outcome of most inputs.
template <class F>
int refusing(F&& f) {
  try {
    f();
  } catch (const std::exception&) {
  }
  return 0;
}

std::string bytes_of(const uint8_t* data, size_t size) {
  return std::string(reinterpret_cast<const char*>(data), size);
}

// The input as a file of its own (the readers under test take paths): an in-memory file, named
// by /proc/self/fd, rewritten for each input.
class InputFile {
 public:
  explicit InputFile(const char* name) : fd_(::memfd_create(name, 0)) {
    if (fd_ < 0) throw std::runtime_error("memfd_create failed");
  }
  std::string write(const uint8_t* data, size_t size) {
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size)) {
      throw std::runtime_error("cannot write the fuzz input");
    }
    return "/proc/self/fd/" + std::to_string(fd_);
  }

 private:
  int fd_;
};

}  // namespace

int safetensors(const uint8_t* data, size_t size) {
  return refusing([&] {
    const auto content = safetensors_parse(bytes_of(data, size), "fuzz.safetensors");
    refusing([&] { checkpoint_info_from_metadata(content.metadata, "fuzz.safetensors"); });
  });
}

int configs(const uint8_t* data, size_t size) {
  return refusing([&] {
    const auto j = nlohmann::json::parse(bytes_of(data, size));
    refusing([&] { unet_config_from_json(j); });
    refusing([&] { schedule_config_from_json(j); });
    refusing([&] { sampling_defaults_from_json(j); });
    refusing([&] { unet_config_from_diffusers(j); });
    refusing([&] { scheduler_from_diffusers(j); });
  });
}

int image(const uint8_t* data, size_t size) {
  const auto bytes = bytes_of(data, size);
  // Decoding and resizing take time in proportion to the pixels an image claims (instrumented, a
  // 38-million-pixel claim took over a minute): claims above 2^21 pixels, refused or decoded, are
  // left to the unit tests (tests/test_io.cpp): every input then runs in seconds at most, under
  // libFuzzer's 20 s limit on a busy machine.
  try {
    const auto header = image_bytes_header(bytes, "fuzz.png");
    if (header.width * header.height > (int64_t{1} << 21)) return 0;
  } catch (const std::exception&) {  // no readable header: decoding refuses it below
  }
  refusing([&] { decode_image_u8(bytes, "fuzz.png", 1, 0); });
  return refusing([&] { decode_image_u8(bytes, "fuzz.png", 3, 8); });
}

int idx(const uint8_t* data, size_t size) {
  static InputFile file("fuzz-idx");
  const auto path = file.write(data, size);
  refusing([&] { read_idx_u8(path, 3, uint64_t{1} << 24); });
  return refusing([&] { read_idx_u8(path, 1, uint64_t{1} << 24); });
}

int archive(const uint8_t* data, size_t size) {
  if (!image_archives_built()) return 0;
  static InputFile file("fuzz-archive");
  const auto path = file.write(data, size);
  return refusing([&] { load_image_archive(path, Split::train, DataOptions{8, 4}); });
}

int captions(const uint8_t* data, size_t size) {
  // a folder of two images, made once and removed at exit; the input becomes each kind of caption
  // file in turn
  struct ImageTree {
    std::string root;
    ImageTree() {
      char pattern[] = "/tmp/diffuse-fuzz-captions-XXXXXX";
      if (!::mkdtemp(pattern)) throw std::runtime_error("mkdtemp failed");
      root = pattern;
      for (const char* folder : {"/a", "/b"}) ::mkdir((root + folder).c_str(), 0700);
      save_image_png(root + "/a/0.png", torch::zeros({1, 4, 4}));
      save_image_png(root + "/b/1.png", torch::zeros({1, 4, 4}));
    }
    ~ImageTree() {
      for (const char* path : {"/a/0.png", "/b/1.png", "/a", "/b", ""}) std::remove((root + path).c_str());
    }
  };
  static const ImageTree tree;
  const std::string& dir = tree.root;
  const auto text = bytes_of(data, size);
  for (const char* name : {"/metadata.jsonl", "/metadata.csv", "/a/0.txt"}) {
    write_file_atomic(dir + name, text);
    refusing([&] { load_image_folder(dir, Split::train, DataOptions{4, 0}); });
    std::remove((dir + name).c_str());
  }
  return 0;
}

int tokenizer(const uint8_t* data, size_t size) {
  const auto text = bytes_of(data, size);
  refusing([&] {  // the stored form, then the input as a prompt to what it made
    const auto tok = Tokenizer::from_json(nlohmann::json::parse(text));
    tok.decode(tok.encode(text));
  });
  refusing([&] {  // the input's lines as captions
    std::vector<std::string> lines;
    std::string line;
    for (const char c : text) {
      if (c == '\n') {
        lines.push_back(line);
        line.clear();
      } else {
        line += c;
      }
    }
    lines.push_back(line);
    const auto tok = Tokenizer::learn(lines);
    for (const auto& l : lines) tok.decode(tok.encode(l));
  });
  return 0;
}

#ifdef DIFFUSE_FUZZ_SERVE
int requests(const uint8_t* data, size_t size) {
  using namespace diffuse::serve;
  static const std::vector<ModelFacts> models = [] {
    ModelFacts plain;
    plain.name = "plain";
    ModelFacts classes;
    classes.name = "classes";
    classes.timesteps = 100;
    classes.channels = 3;
    classes.image_size = 32;
    classes.num_classes = 3;
    classes.class_names = {"cat", "dog", "1"};
    return std::vector<ModelFacts>{plain, classes};
  }();
  const RequestLimits limits;
  const auto text = bytes_of(data, size);
  refusing([&] { base64_decode(text); });
  refusing([&] { class_in_prompt(text, models[1].class_names); });
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(text);
  } catch (const std::exception&) {
    return 0;
  }
  refusing([&] { native_generate_request(body, models, limits); });
  refusing([&] { openai_generate_request(body, models, limits); });
  refusing([&] { a1111_generate_request(body, models, limits); });
  refusing([&] { native_edit_request(body, models, limits); });
  refusing([&] { a1111_edit_request(body, models, limits); });
  refusing([&] { native_interpolate_request(body, models, limits); });
  refusing([&] {  // the text fields of a multipart edit, as strings
    std::map<std::string, std::string> fields;
    for (const auto& [key, value] : body.items())
      fields[key] = value.is_string() ? value.get<std::string>() : value.dump();
    openai_edit_request(fields, "image", "", models, limits);
  });
  return 0;
}
#endif

const std::vector<NamedTarget>& targets() {
  static const std::vector<NamedTarget> all = {
      {"safetensors", safetensors}, {"configs", configs},   {"image", image},         {"idx", idx},
      {"archive", archive},         {"captions", captions}, {"tokenizer", tokenizer},
#ifdef DIFFUSE_FUZZ_SERVE
      {"requests", requests},
#endif
  };
  return all;
}

}  // namespace diffuse::fuzz
