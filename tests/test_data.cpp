// Data: the shipped MNIST, IDX validation, image folders and archives, CIFAR-10 records, the batch loader.
#include <gtest/gtest.h>

#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "diffuse/data/dataset.h"
#include "diffuse/data/idx.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse_build_config.h"
#include "support/error_of.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::TempDir;

namespace {
// An IDX image file with n images of h×w, as raw bytes.
std::string idx_images(int n, int h, int w) {
  std::string s = {0, 0, 8, 3};
  for (int v : {n, h, w}) {
    for (int shift : {24, 16, 8, 0}) s.push_back(static_cast<char>((v >> shift) & 0xff));
  }
  for (int i = 0; i < n * h * w; ++i) s.push_back(static_cast<char>(i % 251));
  return s;
}
}  // namespace

TEST(Mnist, TheShippedCopyLoadsWithTheRightShapesAndLabels) {
  auto train = load_dataset("mnist", Split::train);
  auto test = load_dataset("mnist", Split::test);
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{60000, 1, 28, 28}));
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(train.num_classes, 10);
  // Published MNIST facts: the first training labels are 5, 0, 4, 1, 9; the test set has 1135 ones.
  EXPECT_EQ(train.labels.narrow(0, 0, 5).equal(torch::tensor({5, 0, 4, 1, 9}, torch::kLong)), true);
  EXPECT_EQ(test.labels.eq(1).sum().item<int64_t>(), 1135);
  EXPECT_EQ(load_dataset("mnist", Split::train, DataOptions{0, 100}).size(), 100);
}

// The shipped copy is the published one: each file, uncompressed, has the MD5 listed beside it
// (data/mnist/MD5SUMS.uncompressed, equal to the published MNIST sums). A truncated or altered
// copy (a failed fetch, an edit) fails here; the loader itself checks sizes and magic numbers only.
TEST(Mnist, TheShippedFilesMatchTheirChecksums) {
  const std::filesystem::path dir = std::filesystem::path(DIFFUSE_DEFAULT_DATA_DIR) / "mnist";
  std::ifstream sums(dir / "MD5SUMS.uncompressed");
  ASSERT_TRUE(sums) << dir / "MD5SUMS.uncompressed";
  std::string sum, name;
  int files = 0;
  while (sums >> sum >> name) {
    const auto r = diffuse::testing::run_command("zcat '" + (dir / (name + ".gz")).string() + "' | md5sum");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(r.output.substr(0, 32), sum) << name;
    ++files;
  }
  EXPECT_EQ(files, 4);
}

TEST(FashionMnist, DebiansPackageLoadsThroughItsName) {
  // scripts/setup installs dataset-fashion-mnist; same IDX format and sizes as MNIST. Machines
  // set up otherwise (the GPU check's) may lack it.
  if (!std::getenv("DIFFUSE_FASHION_MNIST_DIR") && !std::filesystem::exists("/usr/share/datasets/fashion-mnist")) {
    GTEST_SKIP() << "no /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)";
  }
  auto test = load_dataset("fashion-mnist", Split::test);
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{10000, 1, 28, 28}));
  EXPECT_EQ(test.num_classes, 10);
  EXPECT_EQ(test.labels.eq(0).sum().item<int64_t>(), 1000);  // balanced: 1,000 per class
}

TEST(Idx, ReadsPlainAndGzipAndRejectsDamage) {
  TempDir dir;
  const auto good = idx_images(3, 4, 4);
  write_file_atomic(dir / "plain", good);
  auto t = read_idx_u8(dir / "plain", 3);
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 4, 4}));
  EXPECT_EQ(t[2][3][3].item<uint8_t>(), (2 * 16 + 3 * 4 + 3) % 251);
  {
    gzFile f = gzopen((dir / "z.gz").c_str(), "wb");
    gzwrite(f, good.data(), static_cast<unsigned>(good.size()));
    gzclose(f);
  }
  EXPECT_TRUE(torch::equal(read_idx_u8(dir / "z.gz", 3), t));

  write_file_atomic(dir / "cut", good.substr(0, good.size() - 7));
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "cut", 3); }).find("truncated"), std::string::npos);
  write_file_atomic(dir / "long", good + "xx");
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "long", 3); }).find("trailing bytes"), std::string::npos);
  std::string bad = good;
  bad[0] = 7;
  write_file_atomic(dir / "magic", bad);
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "magic", 3); }).find("bad magic"), std::string::npos);
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "plain", 1); }).find("3 dimensions, expected 1"), std::string::npos);
  write_file_atomic(dir / "head", good.substr(0, 6));
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "head", 3); }).find("header"), std::string::npos);
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "absent", 3); }).find("absent"), std::string::npos);
  // non-square images; a header that promises more than the limit, or far more than the file holds
  write_file_atomic(dir / "wide", idx_images(2, 28, 3));
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "wide", 3); }).find("images are 28×3"), std::string::npos);
  EXPECT_NE(error_of([&] { read_idx_u8(dir / "plain", 3, 47); }).find("48 bytes of data, more than the limit of 47"),
            std::string::npos);
  // 1024 images of 1024×1024: the header promises 1 GiB, the file holds nothing
  const std::string header_only("\0\0\x08\x03\0\0\x04\0\0\0\x04\0\0\0\x04\0", 16);
  write_file_atomic(dir / "claim", header_only);
  const auto claim = error_of([&] { read_idx_u8(dir / "claim", 3); });
  EXPECT_NE(claim.find("found 0"), std::string::npos) << claim;  // refused without allocating what it claims
}

TEST(Idx, DirectoryWithMismatchedCountsIsAnError) {
  TempDir dir;
  write_file_atomic(dir / "train-images-idx3-ubyte", idx_images(3, 2, 2));
  std::string labels = {0, 0, 8, 1, 0, 0, 0, 2, 1, 2};
  write_file_atomic(dir / "train-labels-idx1-ubyte", labels);
  const auto msg = error_of([&] { load_dataset(dir.str(), Split::train); });
  EXPECT_NE(msg.find("3 images"), std::string::npos) << msg;
  EXPECT_NE(msg.find("2 labels"), std::string::npos) << msg;
}

TEST(Idx, ImagesKeepTheirSizeUnlessOneIsAskedForAndLargeOnesWantOne) {
  TempDir dir;
  std::string labels = {0, 0, 8, 1, 0, 0, 0, 2, 1, 2};
  write_file_atomic(dir / "train-labels-idx1-ubyte", labels);
  write_file_atomic(dir / "train-images-idx3-ubyte", idx_images(2, 40, 40));
  EXPECT_EQ(load_dataset(dir.str(), Split::train).image_size(), 40);
  const auto small = load_dataset(dir.str(), Split::train, DataOptions{20, 0});
  EXPECT_EQ(small.images.sizes(), (std::vector<int64_t>{2, 1, 20, 20}));
  // shrinking averages each 2×2 block of the original (rounded to the nearest level)
  const auto original = load_dataset(dir.str(), Split::train).images.to(torch::kFloat64);
  const auto block_means = original.reshape({2, 1, 20, 2, 20, 2}).mean({3, 5}).round().to(torch::kUInt8);
  EXPECT_TRUE(torch::equal(small.images, block_means));
  // images larger than 256 are refused unless a size is asked for
  write_file_atomic(dir / "train-images-idx3-ubyte", idx_images(2, 300, 300));
  const auto refused = error_of([&] { load_dataset(dir.str(), Split::train); });
  EXPECT_NE(refused.find("300×300"), std::string::npos) << refused;
  EXPECT_NE(refused.find("--image-size"), std::string::npos) << refused;
  EXPECT_EQ(load_dataset(dir.str(), Split::train, DataOptions{64, 0}).image_size(), 64);
  // the pixel limit can be lowered (and raised): 2 × 300 × 300 bytes against 100,000
  const auto limited = error_of([&] { load_dataset(dir.str(), Split::train, DataOptions{64, 0, 100000}); });
  EXPECT_NE(limited.find("more than the limit of 100000"), std::string::npos) << limited;
}

TEST(Images, ResizingAConstantImageKeepsItsLevelBothWays) {
  const auto grey = torch::full({3, 2, 10, 10}, 77, torch::kUInt8);
  EXPECT_TRUE(torch::equal(resize_images(grey, 4), torch::full({3, 2, 4, 4}, 77, torch::kUInt8)));
  EXPECT_TRUE(torch::equal(resize_images(grey, 23), torch::full({3, 2, 23, 23}, 77, torch::kUInt8)));
}

TEST(ImageFolder, ClassesAreSubfoldersAndImagesAreResized) {
  TempDir dir;
  std::filesystem::create_directories(dir / "cats");
  std::filesystem::create_directories(dir / "dogs");
  save_image_png(dir / "cats/a.png", torch::zeros({3, 10, 10}));
  save_image_png(dir / "cats/b.png", torch::ones({3, 20, 16}));
  save_image_png(dir / "dogs/c.png", torch::full({1, 8, 8}, -1.0));
  auto d = load_dataset(dir.str(), Split::train, DataOptions{12, 0});
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{3, 3, 12, 12}));
  EXPECT_EQ(d.num_classes, 2);
  EXPECT_TRUE(d.labels.equal(torch::tensor({0, 0, 1}, torch::kLong)));
  EXPECT_EQ(d.images[1].min().item<uint8_t>(), 255);  // white stays white after resizing
  EXPECT_EQ(d.images[2].max().item<uint8_t>(), 0);    // grey file promoted to RGB
  write_file_atomic(dir / "dogs/broken.png", "not a png");
  EXPECT_NE(error_of([&] { load_dataset(dir.str(), Split::train); }).find("broken.png"), std::string::npos);
}

namespace {
// A small image tree: train/cats (2), train/dogs (1), test/cats (1), of different sizes and
// contents, written as PNG files under `root`.
void write_small_tree(const std::string& root) {
  for (const char* d : {"train/cats", "train/dogs", "test/cats"}) std::filesystem::create_directories(root + "/" + d);
  torch::manual_seed(5);
  save_image_png(root + "/train/cats/a.png", torch::rand({3, 10, 10}) * 2 - 1);
  save_image_png(root + "/train/cats/b.png", torch::rand({3, 20, 16}) * 2 - 1);
  save_image_png(root + "/train/dogs/c.png", torch::rand({1, 8, 8}) * 2 - 1);
  save_image_png(root + "/test/cats/d.png", torch::rand({3, 12, 12}) * 2 - 1);
}

// tar -czf `archive` of root's train/ and test/ (members "train/...", "test/...").
void tar_gz(const std::string& root, const std::string& archive) {
  const auto r = diffuse::testing::run_command("tar -czf " + archive + " -C " + root + " train test");
  ASSERT_EQ(r.status, 0) << r.output;
}
}  // namespace

TEST(ImageArchive, ReadsTheTreeAsTheExtractedFolderGivesIt) {
  if (!image_archives_built()) GTEST_SKIP() << "built without libarchive";
  TempDir dir;
  write_small_tree(dir / "tree");
  tar_gz(dir / "tree", dir / "images.tar.gz");
  for (Split split : {Split::train, Split::test}) {
    const auto folder = load_dataset(dir / "tree", split, DataOptions{12, 0});
    const auto archive = load_dataset(dir / "images.tar.gz", split, DataOptions{12, 0});
    EXPECT_TRUE(archive.images.equal(folder.images)) << to_string(split);
    EXPECT_TRUE(archive.labels.equal(folder.labels)) << to_string(split);
    EXPECT_EQ(archive.num_classes, folder.num_classes);
  }
  const auto train = load_dataset(dir / "images.tar.gz", Split::train, DataOptions{12, 0});
  EXPECT_EQ(train.images.sizes(), (std::vector<int64_t>{3, 3, 12, 12}));
  EXPECT_TRUE(train.labels.equal(torch::tensor({0, 0, 1}, torch::kLong)));
  // --limit: the first images by path, as from the folder (the archive's second pass stops after them)
  const auto limited = load_dataset(dir / "images.tar.gz", Split::train, DataOptions{12, 2});
  EXPECT_EQ(limited.size(), 2);
  EXPECT_TRUE(limited.images.equal(load_dataset(dir / "tree", Split::train, DataOptions{12, 2}).images));
  // the same tree wrapped in one folder (flowers/train/CLASS/..., as the flowers archive is)
  const auto r = diffuse::testing::run_command("cd " + dir.str() + " && mv tree wrapped && mkdir tree && mv wrapped tree/ && "
                                               "tar -czf wrapped.tar.gz -C tree wrapped");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto wrapped = load_dataset(dir / "wrapped.tar.gz", Split::train, DataOptions{12, 0});
  EXPECT_TRUE(wrapped.images.equal(train.images));
  EXPECT_TRUE(wrapped.labels.equal(train.labels));
}

TEST(ImageArchive, AMemberClaimingGigabytesIsRefusedBeforeItIsAllocated) {
  if (!image_archives_built()) GTEST_SKIP() << "built without libarchive";
  TempDir dir;
  // an 8 GiB sparse image: a 169-byte .tar.gz
  const auto r = diffuse::testing::run_command("mkdir -p " + dir / "tree/train/a" + " && truncate -s 8G " +
                                               dir / "tree/train/a/0.png" + " && tar -Sczf " + dir / "bomb.tar.gz" +
                                               " -C " + dir / "tree" + " train && rm " + dir / "tree/train/a/0.png");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto msg = error_of([&] { load_dataset(dir / "bomb.tar.gz", Split::train); });
  EXPECT_NE(msg.find("member 'train/a/0.png' claims 8589934592 bytes"), std::string::npos) << msg;
}

TEST(ImageArchive, AHardLinkedMemberIsRefusedNotDropped) {
  if (!image_archives_built()) GTEST_SKIP() << "built without libarchive";
  TempDir dir;
  write_small_tree(dir / "tree");
  const auto r =
      diffuse::testing::run_command("cd " + dir / "tree" + " && f=$(find train -name '*.png' | head -1) && ln " +
                                    "$f train/linked.png && tar -czf " + dir / "links.tar.gz" + " train test");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto msg = error_of([&] { load_dataset(dir / "links.tar.gz", Split::train); });
  EXPECT_NE(msg.find("is a hard link to"), std::string::npos) << msg;
}

TEST(ImageArchive, TruncatedArchivesAndBrokenMembersAreClearErrors) {
  if (!image_archives_built()) GTEST_SKIP() << "built without libarchive";
  TempDir dir;
  write_small_tree(dir / "tree");
  write_file_atomic(dir / "tree/train/dogs/broken.png", "not a png");
  tar_gz(dir / "tree", dir / "broken.tar.gz");
  auto msg = error_of([&] { load_dataset(dir / "broken.tar.gz", Split::train); });
  EXPECT_NE(msg.find("train/dogs/broken.png"), std::string::npos) << msg;  // the member's whole name
  // the other split never reads the broken member
  EXPECT_NO_THROW(load_dataset(dir / "broken.tar.gz", Split::test));
  std::filesystem::remove(dir / "tree/train/dogs/broken.png");
  tar_gz(dir / "tree", dir / "good.tar.gz");
  const auto bytes = read_file(dir / "good.tar.gz");
  write_file_atomic(dir / "cut.tar.gz", bytes.substr(0, bytes.size() / 2));
  msg = error_of([&] { load_dataset(dir / "cut.tar.gz", Split::train); });
  EXPECT_NE(msg.find("cut.tar.gz"), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated or corrupt"), std::string::npos) << msg;
}

TEST(Cifar10, TheJpegArchiveIsReadWhereNoBatchesAreThere) {
  if (!image_archives_built()) GTEST_SKIP() << "built without libarchive";
  TempDir dir;
  write_small_tree(dir / "tree");
  tar_gz(dir / "tree", dir / "cifar10-jpeg-q75.tar.gz");
  const auto test = load_cifar10(dir.str(), Split::test, {});
  EXPECT_EQ(test.name, "cifar10");
  EXPECT_EQ(test.images.sizes(), (std::vector<int64_t>{1, 3, 32, 32}));
  // the real archive, where the development checkout has it: the whole test split
  const std::string shared = std::string(DIFFUSE_SOURCE_DIR) + "/../shared/data/cifar10";
  if (!std::filesystem::exists(shared + "/cifar10-jpeg-q75.tar.gz")) GTEST_SKIP() << "no " << shared;
  const auto real = load_cifar10(shared, Split::test, {});
  EXPECT_EQ(real.images.sizes(), (std::vector<int64_t>{10000, 3, 32, 32}));
  EXPECT_EQ(real.num_classes, 10);
  EXPECT_TRUE(torch::bincount(real.labels).equal(torch::full({10}, 1000, torch::kLong)));
}

TEST(Cifar10, ReadsBinaryRecordsAndRejectsTruncatedBatches) {
  TempDir dir;
  std::string records;
  for (int r = 0; r < 2; ++r) {
    records.push_back(static_cast<char>(r + 3));  // label
    for (int i = 0; i < 3072; ++i) records.push_back(static_cast<char>(i < 1024 ? 10 * r : (i < 2048 ? 100 : 200)));
  }
  write_file_atomic(dir / "data_batch_1.bin", records);
  auto d = load_cifar10(dir.str(), Split::train, {});
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{2, 3, 32, 32}));
  EXPECT_TRUE(d.labels.equal(torch::tensor({3, 4}, torch::kLong)));
  EXPECT_EQ(d.images[1][0][5][5].item<uint8_t>(), 10);   // R plane of record 1
  EXPECT_EQ(d.images[1][2][31][31].item<uint8_t>(), 200);  // B plane
  write_file_atomic(dir / "data_batch_2.bin", records.substr(0, 4000));
  EXPECT_NE(error_of([&] { load_cifar10(dir.str(), Split::train, {}); }).find("truncated"), std::string::npos);
  EXPECT_NE(error_of([&] { load_cifar10(dir.str(), Split::test, {}); }).find("DIFFUSE_CIFAR10_DIR"), std::string::npos);
}

TEST(BatchLoader, SeededOrderIsReproducibleAndCoversTheEpoch) {
  Dataset d;
  d.name = "counting";
  d.images = torch::arange(10, torch::kUInt8).view({10, 1, 1, 1});
  d.labels = torch::arange(10, torch::kLong);
  auto epoch = [&](uint64_t seed) {
    torch::manual_seed(seed);
    BatchLoader loader(d, 5, torch::kCPU);
    return torch::cat({loader.next().labels, loader.next().labels});
  };
  auto a = epoch(1), b = epoch(1);
  EXPECT_TRUE(a.equal(b));
  EXPECT_TRUE(std::get<0>(a.sort()).equal(torch::arange(10, torch::kLong)));  // every image once
  torch::manual_seed(1);
  BatchLoader loader(d, 5, torch::kCPU);
  auto batch = loader.next();
  // pixel value v ↦ v/127.5 − 1
  EXPECT_TRUE(torch::allclose(batch.x0.flatten(), batch.labels.to(torch::kFloat32) / 127.5 - 1.0));
}
