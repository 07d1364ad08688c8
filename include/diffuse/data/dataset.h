// Image datasets held in memory as 8-bit pixels, and the shuffling batch loader.
//   --data mnist | fashion-mnist | cifar10 | captioned-digits | DIR | ARCHIVE.tar.gz
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace diffuse {

enum class Split { train, test };
Split split_from_string(const std::string& name);  // "train" | "test"
std::string to_string(Split split);

struct Dataset {
  std::string name;
  torch::Tensor images;     // uint8 [N, C, H, W]
  torch::Tensor labels;     // int64 [N]
  int64_t num_classes = 0;  // 0 when unlabelled
  std::vector<std::string> captions;  // one per image where the data has captions, else empty

  bool captioned() const { return !captions.empty(); }

  int64_t size() const { return images.size(0); }
  int64_t channels() const { return images.size(1); }
  int64_t image_size() const { return images.size(2); }
};

struct DataOptions {
  // Every image resized to image_size × image_size; 0: image folders and archives at
  // kFolderImageSize, IDX and CIFAR-10 at their own size (up to kMaxOwnImageSize).
  int64_t image_size = 0;
  // Keep only the first `limit` images (0: all).
  int64_t limit = 0;
  // The pixel bytes an IDX file may hold (train --max-data-gib raises it).
  uint64_t max_idx_bytes = uint64_t{1} << 30;
};
constexpr int64_t kFolderImageSize = 32;
// IDX and CIFAR images larger than this are refused unless an image size is given (a data set
// of large images would otherwise build a network whose attention alone takes gigabytes).
constexpr int64_t kMaxOwnImageSize = 256;

// [N, C, H, W] uint8 → [N, C, size, size] uint8: the mean over each output pixel's area when
// shrinking, bilinear when growing; rounded to the nearest level.
torch::Tensor resize_images(const torch::Tensor& images, int64_t size);

// Where the data sets live: $DIFFUSE_DATA_DIR, else the repository's data/ folder.
std::string data_root();

// Loads a named data set or a directory (IDX files or an image tree). Errors name the files.
Dataset load_dataset(const std::string& spec, Split split, const DataOptions& options = {});

// MNIST-style IDX pair in `dir` for a split: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz],
// at their own size, at most max_bytes of pixels.
Dataset load_idx_dataset(const std::string& dir, Split split, const std::string& name,
                         uint64_t max_bytes = DataOptions{}.max_idx_bytes);
// CIFAR-10 binary batches (data_batch_*.bin / test_batch.bin) or an image tree train/CLASS/*.
Dataset load_cifar10(const std::string& dir, Split split, const DataOptions& options);
// Images under `dir` (recursively); the class is the first sub-folder. If `dir` holds train/ or
// test/ folders, the split picks one.
Dataset load_image_folder(const std::string& dir, Split split, const DataOptions& options);
// The same tree inside a .tar.gz, .tgz or .tar archive, read without extracting it (libarchive;
// where the build has none, an error that says so). Errors name the archive and the member.
Dataset load_image_archive(const std::string& path, Split split, const DataOptions& options);
bool is_image_archive_path(const std::string& path);  // by its name: .tar.gz, .tgz, .tar
bool image_archives_built();

// Every `count`-th image starting at `index` (a data-parallel rank's share; views, no copy).
Dataset shard_of(const Dataset& data, int64_t index, int64_t count);

// Shuffles with torch's default generator (so a seed fixes the order) and hands out batches
// as [−1, 1] floats; reshuffles at every epoch.
// On a GPU the images (as uint8) and each epoch's order are copied to it once, up to
// kDeviceResidentBytes of images, so that a batch is gathered there: copying each batch from
// pageable host memory would make the host wait for the previous step at every step, and keep it
// from queueing the next step's kernels ahead of the GPU.
class BatchLoader {
 public:
  static constexpr int64_t kDeviceResidentBytes = int64_t{2} << 30;  // 2 GiB
  BatchLoader(const Dataset& data, int64_t batch_size, torch::Device device);
  struct Batch {
    torch::Tensor x0;      // [B, C, H, W] in [−1, 1]
    torch::Tensor labels;  // [B]
  };
  Batch next();
  // Position for resuming: epoch order and where we are in it.
  torch::Tensor order() const { return order_; }
  int64_t cursor() const { return cursor_; }
  void restore(const torch::Tensor& order, int64_t cursor);

 private:
  void set_order(torch::Tensor order);

  const Dataset& data_;
  int64_t batch_size_;
  torch::Device device_;
  torch::Tensor images_, labels_;  // the data where batches are gathered: on the device, or data_'s own
  torch::Tensor order_;            // this epoch's permutation (CPU: resuming saves it)
  torch::Tensor order_gathered_;   // the same on images_' device
  int64_t cursor_ = 0;
};

}  // namespace diffuse
