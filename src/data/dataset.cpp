#include "diffuse/data/dataset.h"

#include <cstdlib>
#include <filesystem>
#include <stdexcept>

#include "diffuse/data/captioned_digits.h"
#include "diffuse/data/idx.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse_build_config.h"

namespace fs = std::filesystem;

namespace diffuse {

Split split_from_string(const std::string& name) {
  if (name == "train") return Split::train;
  if (name == "test") return Split::test;
  throw std::invalid_argument("unknown split '" + name + "' (expected train or test)");
}

std::string to_string(Split split) { return split == Split::train ? "train" : "test"; }

std::string data_root() {
  if (const char* env = std::getenv("DIFFUSE_DATA_DIR"); env && *env) return env;
  return DIFFUSE_DEFAULT_DATA_DIR;
}

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

// "dir/stem" or "dir/stem.gz", whichever exists (empty if neither).
std::string find_plain_or_gz(const std::string& dir, const std::string& stem) {
  for (const std::string& candidate : {dir + "/" + stem, dir + "/" + stem + ".gz"})
    if (fs::exists(candidate)) return candidate;
  return {};
}

// The data set at the size the options ask for (IDX and CIFAR-10 are read at their own).
Dataset fit_size(Dataset d, const DataOptions& options) {
  const int64_t own = d.image_size();
  if (options.image_size == 0 && own > kMaxOwnImageSize) {
    throw std::runtime_error("data '" + d.name + "': images are " + std::to_string(own) + "×" + std::to_string(own) +
                             ", more than the " + std::to_string(kMaxOwnImageSize) +
                             " read as they are: give an image size (train --image-size N) to resize them");
  }
  if (options.image_size > 0 && options.image_size != own) d.images = resize_images(d.images, options.image_size);
  return d;
}

Dataset limit_dataset(Dataset d, int64_t limit) {
  if (limit > 0 && limit < d.size()) {
    d.images = d.images.narrow(0, 0, limit).clone();
    d.labels = d.labels.narrow(0, 0, limit).clone();
    if (d.captioned()) d.captions.resize(limit);
  }
  return d;
}

}  // namespace

Dataset load_idx_dataset(const std::string& dir, Split split, const std::string& name, uint64_t max_bytes) {
  const std::string prefix = split == Split::train ? "train" : "t10k";
  const std::string images_path = find_plain_or_gz(dir, prefix + "-images-idx3-ubyte");
  const std::string labels_path = find_plain_or_gz(dir, prefix + "-labels-idx1-ubyte");
  if (images_path.empty() || labels_path.empty()) {
    throw std::runtime_error("data '" + name + "': no " + prefix + "-images-idx3-ubyte[.gz] and " + prefix +
                             "-labels-idx1-ubyte[.gz] in '" + dir + "'");
  }
  Dataset d;
  d.name = name;
  d.images = read_idx_u8(images_path, 3, max_bytes).unsqueeze(1);  // [N, 1, H, W]
  d.labels = read_idx_u8(labels_path, 1).to(torch::kLong);
  if (d.images.size(0) != d.labels.size(0)) {
    throw std::runtime_error("data '" + name + "': '" + images_path + "' has " + std::to_string(d.images.size(0)) +
                             " images but '" + labels_path + "' has " + std::to_string(d.labels.size(0)) + " labels");
  }
  d.num_classes = d.labels.numel() ? d.labels.max().item<int64_t>() + 1 : 0;
  return d;
}

Dataset load_cifar10(const std::string& dir, Split split, const DataOptions& options) {
  // Binary batches: records of 1 label byte + 3·1024 pixel bytes (R, G, B planes).
  std::vector<std::string> files;
  if (fs::is_directory(dir)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      const auto fname = e.path().filename().string();
      const bool is_train = fname.rfind("data_batch_", 0) == 0 && e.path().extension() == ".bin";
      const bool is_test = fname == "test_batch.bin";
      if ((split == Split::train && is_train) || (split == Split::test && is_test)) files.push_back(e.path().string());
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) {
    // else the JPEG tree, extracted or as the archive it comes in
    Dataset d;
    const auto archive = fs::path(dir) / "cifar10-jpeg-q75.tar.gz";
    if (fs::is_directory(fs::path(dir) / to_string(split))) {
      d = load_image_folder(dir, split, DataOptions{32, options.limit});
    } else if (fs::is_regular_file(archive) && image_archives_built()) {
      d = load_image_archive(archive.string(), split, DataOptions{32, options.limit});  // CIFAR-10's own 32
    } else {
      throw std::runtime_error("data 'cifar10': no " +
                               std::string(split == Split::train ? "data_batch_*.bin" : "test_batch.bin") + " nor " +
                               to_string(split) + "/CLASS/*.jpg nor a readable cifar10-jpeg-q75.tar.gz under '" + dir +
                               "' (set DIFFUSE_CIFAR10_DIR to a folder holding the binary batches or the JPEG tree)");
    }
    d.name = "cifar10";
    return fit_size(std::move(d), options);
  }
  constexpr int64_t kRecord = 1 + 3 * 32 * 32;
  std::vector<torch::Tensor> images, labels;
  for (const auto& path : files) {
    const std::string bytes = read_file(path);
    if (bytes.empty() || bytes.size() % kRecord != 0) {
      throw std::runtime_error("CIFAR-10 file '" + path + "': size " + std::to_string(bytes.size()) +
                               " is not a whole number of 3073-byte records (truncated?)");
    }
    const int64_t n = static_cast<int64_t>(bytes.size()) / kRecord;
    auto records = torch::from_blob(const_cast<char*>(bytes.data()), {n, kRecord}, torch::kUInt8).clone();
    auto lab = records.select(1, 0).to(torch::kLong);
    if (lab.max().item<int64_t>() > 9) throw std::runtime_error("CIFAR-10 file '" + path + "': label byte above 9 (corrupt?)");
    labels.push_back(lab);
    images.push_back(records.narrow(1, 1, 3 * 1024).reshape({n, 3, 32, 32}));
  }
  Dataset d;
  d.name = "cifar10";
  d.images = torch::cat(images);
  d.labels = torch::cat(labels);
  d.num_classes = 10;
  return fit_size(limit_dataset(std::move(d), options.limit), options);
}

Dataset load_dataset(const std::string& spec, Split split, const DataOptions& options) {
  Dataset d;
  if (spec == "mnist") {
    d = load_idx_dataset(env_or("DIFFUSE_MNIST_DIR", data_root() + "/mnist"), split, "mnist", options.max_idx_bytes);
  } else if (spec == "fashion-mnist") {
    d = load_idx_dataset(env_or("DIFFUSE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"), split,
                         "fashion-mnist", options.max_idx_bytes);
  } else if (spec == "cifar10") {
    std::string dir = env_or("DIFFUSE_CIFAR10_DIR", data_root() + "/cifar10");
    if (!fs::exists(dir)) dir = data_root() + "/../../shared/data/cifar10";  // the development checkout
    return load_cifar10(dir, split, options);
  } else if (spec == "captioned-digits") {
    // two MNIST digits a canvas and their caption (data/captioned_digits.h), composed from the
    // split's digits: 60000 training canvases without the held-out captions, 10000 test canvases with all
    const auto mnist =
        load_idx_dataset(env_or("DIFFUSE_MNIST_DIR", data_root() + "/mnist"), split, "mnist", options.max_idx_bytes);
    ComposeOptions compose;
    compose.n = options.limit > 0 ? std::min(options.limit, mnist.size()) : mnist.size();
    compose.seed = split == Split::train ? 0 : 1;
    compose.split = split;
    auto composed = compose_captioned_digits(mnist, compose);
    d = std::move(composed.images);
    d.captions = std::move(composed.captions);
  } else if (is_image_archive_path(spec) && fs::is_regular_file(spec)) {
    return load_image_archive(spec, split, options);
  } else if (fs::is_directory(spec)) {
    const std::string prefix = split == Split::train ? "train" : "t10k";
    if (!find_plain_or_gz(spec, prefix + "-images-idx3-ubyte").empty()) {
      d = load_idx_dataset(spec, split, spec, options.max_idx_bytes);
    } else {
      return load_image_folder(spec, split, options);
    }
  } else {
    throw std::runtime_error("data '" + spec +
                             "': not mnist, fashion-mnist, cifar10, captioned-digits, an existing "
                             "directory or an image archive (.tar.gz, .tgz, .tar)");
  }
  // IDX: the first `limit` images, at the size asked for
  return fit_size(limit_dataset(std::move(d), options.limit), options);
}

torch::Tensor resize_images(const torch::Tensor& images, int64_t size) {
  TORCH_CHECK(images.dim() == 4 && images.scalar_type() == torch::kUInt8 && size > 0,
              "resize_images: expected uint8 [N, C, H, W] and a positive size");
  namespace F = torch::nn::functional;
  const bool shrink = size < images.size(2) || size < images.size(3);
  auto out = torch::empty({images.size(0), images.size(1), size, size}, torch::kUInt8);
  // in chunks: the float copy of a large data set would otherwise be four times its bytes
  constexpr int64_t kChunk = 1024;
  for (int64_t begin = 0; begin < images.size(0); begin += kChunk) {
    const int64_t n = std::min(kChunk, images.size(0) - begin);
    const auto x = images.narrow(0, begin, n).to(torch::kFloat32);
    auto options = F::InterpolateFuncOptions().size(std::vector<int64_t>{size, size});
    const auto y = shrink ? F::interpolate(x, options.mode(torch::kArea))
                          : F::interpolate(x, options.mode(torch::kBilinear).align_corners(false));
    out.narrow(0, begin, n).copy_(y.round().clamp(0, 255).to(torch::kUInt8));
  }
  return out;
}

BatchLoader::BatchLoader(const Dataset& data, int64_t batch_size, torch::Device device)
    : data_(data), batch_size_(batch_size), device_(device) {
  TORCH_CHECK(data.size() > 0, "BatchLoader: data set '", data.name, "' is empty");
  TORCH_CHECK(batch_size > 0, "BatchLoader: batch size must be positive");
  const bool resident = device.is_cuda() && data.images.nbytes() <= kDeviceResidentBytes;
  images_ = resident ? data.images.to(device) : data.images;
  labels_ = resident && data.labels.defined() ? data.labels.to(device) : data.labels;
}

void BatchLoader::set_order(torch::Tensor order) {
  order_ = std::move(order);
  order_gathered_ = order_.to(images_.device());  // once an epoch
  cursor_ = 0;
}

BatchLoader::Batch BatchLoader::next() {
  // Batches are drawn without replacement; a new permutation starts when too few remain.
  if (!order_.defined() || cursor_ + batch_size_ > order_.size(0)) set_order(torch::randperm(data_.size(), torch::kLong));
  const int64_t n = std::min(batch_size_, order_.size(0));
  auto idx = order_gathered_.narrow(0, cursor_, n);
  cursor_ += n;
  Batch b;
  // x = pixel / 127.5 − 1 ∈ [−1, 1]
  b.x0 = (images_.index_select(0, idx).to(device_).to(torch::kFloat32) / 127.5 - 1.0);
  b.labels = labels_.index_select(0, idx).to(device_);
  return b;
}

void BatchLoader::restore(const torch::Tensor& order, int64_t cursor) {
  TORCH_CHECK(order.numel() == data_.size(), "BatchLoader::restore: saved order has ", order.numel(),
              " entries but the data set has ", data_.size(), " images (different data?)");
  set_order(order.to(torch::kLong));
  cursor_ = cursor;
}

Dataset shard_of(const Dataset& data, int64_t index, int64_t count) {
  if (count < 1 || index < 0 || index >= count) throw std::invalid_argument("shard_of: need 0 <= index < count");
  if (data.size() < count) throw std::runtime_error("data '" + data.name + "' has fewer images than processes");
  Dataset shard = data;
  shard.images = data.images.slice(0, index, data.size(), count);
  if (data.labels.defined() && data.labels.numel() > 0) shard.labels = data.labels.slice(0, index, data.size(), count);
  if (data.captioned()) {
    shard.captions.clear();
    for (int64_t i = index; i < data.size(); i += count) shard.captions.push_back(data.captions[i]);
  }
  return shard;
}

}  // namespace diffuse
