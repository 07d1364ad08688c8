// safetensors, checkpoints and PNG: round trips, and clear errors for damaged files.
#include <gtest/gtest.h>
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#include <unistd.h>

#include <filesystem>
#include <functional>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/io/atomic_file.h"
#include "diffuse/io/image.h"
#include "diffuse/io/safetensors.h"
#include "diffuse_build_config.h"
#include "support/error_of.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::error_of;
using diffuse::testing::TempDir;


TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  TempDir dir;
  auto a = torch::randn({3, 4});
  auto b = torch::arange(10, torch::kLong);
  auto c = torch::randint(0, 255, {2, 2}, torch::kUInt8);
  save_safetensors(dir / "x.safetensors", {{"a", a}, {"b", b}, {"c", c}}, {{"note", "hello"}});
  auto loaded = load_safetensors(dir / "x.safetensors");
  EXPECT_TRUE(torch::equal(loaded.at("a"), a));
  EXPECT_TRUE(torch::equal(loaded.at("b"), b));
  EXPECT_TRUE(torch::equal(loaded.at("c"), c));
  EXPECT_EQ(loaded.metadata.at("note"), "hello");
  EXPECT_NE(error_of([&] { loaded.at("missing"); }).find("missing"), std::string::npos);
  // The layout any reader expects: 8-byte length, JSON header, data aligned to 8 bytes.
  const auto bytes = read_file(dir / "x.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.size(), 8 + n + 3 * 4 * 4 + 10 * 8 + 4);
}

TEST(Safetensors, DamagedFilesGiveErrorsNamingTheFile) {
  TempDir dir;
  const auto good = safetensors_serialize({{"w", torch::ones({100})}}, {});
  EXPECT_NE(error_of([&] { safetensors_parse(good.substr(0, good.size() - 10), "cut.st"); }).find("cut.st"), std::string::npos);
  EXPECT_NE(error_of([&] { safetensors_parse(good.substr(0, 5), "tiny.st"); }).find("shorter than 8 bytes"), std::string::npos);
  std::string bad_json = good;
  bad_json[8] = '#';  // the header's opening brace
  EXPECT_NE(error_of([&] { safetensors_parse(bad_json, "bad.st"); }).find("does not start with '{'"),
            std::string::npos);
  std::string huge = good;
  huge[7] = 0x7f;  // header length far beyond the file
  EXPECT_NE(error_of([&] { safetensors_parse(huge, "huge.st"); }).find("exceeds the file size"), std::string::npos);
  EXPECT_NE(error_of([&] { load_safetensors(dir / "absent.st"); }).find("absent.st"), std::string::npos);
}

namespace {

// A safetensors file with a hand-written header over `data` bytes (the header padded to 8 bytes).
std::string with_header(std::string header, const std::string& data, int64_t length_change = 0) {
  header.append((8 - header.size() % 8) % 8, ' ');
  const uint64_t n = header.size() + length_change;
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return out + header + data;
}

std::string parse_error(const std::string& bytes) {
  return error_of([&] { safetensors_parse(bytes, "x.st"); });
}

}  // namespace

TEST(Safetensors, TheFormatsRulesAreFollowedStrictly) {
  const std::string data(16, '\0');  // two float32 pairs
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":)";
  const std::string b = R"("b":{"dtype":"F32","shape":[2],"data_offsets":)";
  EXPECT_EQ(parse_error(with_header("{" + a + "[0,8]}," + b + "[8,16]}}", data)), "");
  // a header length one byte short: the data would be read one byte early, every weight misaligned
  const auto good = safetensors_serialize({{"w", torch::ones({4})}}, {});
  std::string short_header = good;
  short_header[0] = static_cast<char>(short_header[0] - 1);
  EXPECT_NE(parse_error(short_header).find("bytes after the last tensor"), std::string::npos)
      << parse_error(short_header);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + b + "[4,12]}}", data)).find("an overlap"), std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + b + "[0,8]}}", data)).find("an overlap"), std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + b + "[12,20]}}", data + "1234")).find("a gap"),
            std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + b + "[8,16]}}", data + "x")).find("1 bytes after"),
            std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + a + "[8,16]}}", data)).find("names 'a' twice"),
            std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8.0]}," + b + "[8,16]}}", data)).find("not two integers"),
            std::string::npos);
  EXPECT_NE(parse_error(with_header("{" + a + "[0,8]}," + b + "[-8,16]}}", data)).find("not two integers"),
            std::string::npos);
  EXPECT_NE(
      parse_error(with_header(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}})", data)).find("sizes >= 0"),
      std::string::npos);
  EXPECT_NE(
      parse_error(with_header(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})", data))
          .find("overflows"),
      std::string::npos);
  EXPECT_NE(parse_error(with_header(R"({"a":{"dtype":"F32","shape":[2]}})", data)).find("malformed entry"),
            std::string::npos);
}

TEST(Png, NonFiniteImagesAreNotWritten) {
  TempDir dir;
  auto image = torch::zeros({1, 4, 4});
  image[0][1][2] = NAN;
  EXPECT_NE(error_of([&] { save_image_png(dir / "x.png", image); }).find("holds NaN or Inf"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(dir / "x.png"));
}

TEST(Png, AnImageClaimingTooManyPixelsIsRefusedBeforeDecoding) {
  TempDir dir;
  save_image_png(dir / "one.png", torch::zeros({1, 1, 1}));
  std::string png = read_file(dir / "one.png");
  for (int field : {16, 20}) {  // IHDR width and height, big-endian: 30000
    png[field] = 0, png[field + 1] = 0, png[field + 2] = 0x75, png[field + 3] = 0x30;
  }
  const auto msg = error_of([&] { decode_image_u8(png, "huge.png", 1, 0); });
  EXPECT_NE(msg.find("image 'huge.png' is 30000×30000, more than the 67108864 pixels"), std::string::npos) << msg;
  // a chunk longer than the file (stb would size a buffer from it before reading)
  std::string chunk = read_file(dir / "one.png");
  chunk[33] = 0x7f;  // the first chunk after IHDR: its length's top byte
  const auto chunk_msg = error_of([&] { decode_image_u8(chunk, "chunk.png", 1, 0); });
  EXPECT_NE(chunk_msg.find("bytes, past the end of the file"), std::string::npos) << chunk_msg;
}

// A file cannot hold more pixels than its bytes describe: a 54-byte BMP header that claims
// 8000×8000 is refused before stb allocates 192 MB for pixels the file does not have; a large
// flat PNG, which compresses ~200:1, still decodes.
TEST(Png, AnImageClaimingMorePixelsThanItsBytesHoldIsRefused) {
  std::string bmp(54, '\0');  // BITMAPFILEHEADER + BITMAPINFOHEADER, little-endian
  const auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) bmp[at + i] = static_cast<char>((v >> (8 * i)) & 0xff);
  };
  bmp[0] = 'B', bmp[1] = 'M';
  put32(2, 54), put32(10, 54), put32(14, 40), put32(18, 8000), put32(22, 8000);
  bmp[26] = 1, bmp[28] = 24;  // one plane, 24 bits a pixel, no compression
  EXPECT_EQ(image_bytes_header(bmp, "bomb.bmp").width, 8000);
  const auto msg = error_of([&] { decode_image_u8(bmp, "bomb.bmp", 3, 8); });
  EXPECT_NE(msg.find("image 'bomb.bmp' claims 8000×8000 pixels in 54 bytes, more than a file of that size can hold"),
            std::string::npos)
      << msg;
  const std::string flat = encode_png(torch::zeros({1, 1500, 1500}, torch::kUInt8));
  EXPECT_GT(int64_t{1500} * 1500, kImagePixelsAlwaysAllowed);
  EXPECT_LE(int64_t{1500} * 1500, kMaxImagePixelsPerByte * static_cast<int64_t>(flat.size()));  // not by the slack
  EXPECT_EQ(decode_image_u8(flat, "flat.png", 1, 0).sizes(), (std::vector<int64_t>{1, 1500, 1500}));
}

// Only PNG, JPEG and BMP reach stb: the 102 bytes of RLE TGA that the fuzzer found (claiming
// 6168×6168, which stb would fill 114 MB past the data's end), a GIF's and a PNM's first bytes and
// an empty file are refused by their first bytes, whatever their names say.
TEST(Png, FormatsOtherThanPngJpegAndBmpAreRefusedByTheirFirstBytes) {
  const std::string tga =
      read_file(std::string(DIFFUSE_SOURCE_DIR) + "/tests/data/fuzz/image/tga_rle_claims_6168x6168.tga");
  for (const auto& [bytes, name] : std::vector<std::pair<std::string, std::string>>{{tga, "bomb.png"},
                                                                                    {"GIF89a\x01\x00\x01\x00", "a.gif"},
                                                                                    {"P5\n1 1\n255\n\x00", "a.pgm"},
                                                                                    {"", "empty.png"},
                                                                                    {"\xff\xff", "fill-only.jpg"}}) {
    for (const auto& call : std::vector<std::function<void()>>{[&] { decode_image_u8(bytes, name, 3, 8); },
                                                               [&] { image_bytes_header(bytes, name); }}) {
      const auto msg = error_of(call);
      EXPECT_NE(msg.find("image '" + name + "' is not a PNG, JPEG or BMP file"), std::string::npos) << msg;
    }
  }
}

// stb 2.27 writes a Huffman table's code lengths into 257 bytes before it checks the counts: a
// JPEG whose table counts more than 256 codes (found by the fuzzer; in front of the frame, or
// between scans) is refused before stb reads it; a JPEG that stb itself wrote decodes.
TEST(Jpeg, AHuffmanTableOfMoreThan256CodesIsRefusedBeforeStbReadsIt) {
  const std::string found = read_file(std::string(DIFFUSE_SOURCE_DIR) +
                                      "/tests/data/fuzz/image/jpeg_huffman_table_of_more_than_256_codes.jpg");
  for (const auto& call : std::vector<std::function<void()>>{[&] { decode_image_u8(found, "found.jpg", 3, 0); },
                                                             [&] { image_bytes_header(found, "found.jpg"); },
                                                             [&] { image_bytes_channels(found, "found.jpg"); }}) {
    const auto msg = error_of(call);
    EXPECT_NE(msg.find("image 'found.jpg': JPEG Huffman table with"), std::string::npos) << msg;
  }
  std::string jpeg;
  auto image = torch::arange(3 * 16 * 16, torch::kInt32).remainder(251).to(torch::kUInt8).reshape({16, 16, 3});
  ASSERT_TRUE(stbi_write_jpg_to_func(
      [](void* out, void* data, int size) {
        static_cast<std::string*>(out)->append(static_cast<const char*>(data), size);
      },
      &jpeg, 16, 16, 3, image.data_ptr<uint8_t>(), 90));
  EXPECT_EQ(decode_image_u8(jpeg, "good.jpg", 3, 0).sizes(), (std::vector<int64_t>{3, 16, 16}));
  EXPECT_EQ(decode_image_u8("\xff\xff" + jpeg, "filled.jpg", 3, 0).sizes(), (std::vector<int64_t>{3, 16, 16}));
  // a table of 16 × 17 = 272 codes after the scan, where a progressive JPEG puts the next scan's tables
  std::string after_scan = jpeg.substr(0, jpeg.size() - 2) + std::string("\xff\xc4\x00\x13\x00", 5);
  after_scan += std::string(16, '\x11') + "\xff\xd9";
  const auto msg = error_of([&] { decode_image_u8(after_scan, "after.jpg", 3, 0); });
  EXPECT_NE(msg.find("JPEG Huffman table with 272 codes, more than 256"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { decode_image_u8("\xff\xff" + after_scan, "x.jpg", 3, 0); }).find("272 codes"),
            std::string::npos);
}

TEST(Safetensors, TheMetadataAloneIsReadFromTheHeader) {
  TempDir dir;
  save_safetensors(dir / "m.st", {{"w", torch::ones({1000})}}, {{"format", "pt"}, {"step", "7"}});
  EXPECT_EQ(load_safetensors_metadata(dir / "m.st"), load_safetensors(dir / "m.st").metadata);
  // the header's rules hold here too
  std::string cut = read_file(dir / "m.st");
  cut[8] = '#';
  write_file_atomic(dir / "cut.st", cut);
  EXPECT_NE(error_of([&] { load_safetensors_metadata(dir / "cut.st"); }).find("does not start with '{'"),
            std::string::npos);
  write_file_atomic(dir / "short.st", "1234");
  EXPECT_NE(error_of([&] { load_safetensors_metadata(dir / "short.st"); }).find("shorter than 8 bytes"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_safetensors_metadata("/dev/zero"); }).find("not a regular file"), std::string::npos);
}

TEST(ReadFile, OnlyRegularFilesUpToTheirLimitAreRead) {
  TempDir dir;
  EXPECT_NE(error_of([&] { read_file("/dev/zero"); }).find("'/dev/zero' is not a regular file"), std::string::npos);
  EXPECT_NE(error_of([&] { read_file(dir.str()); }).find("is not a regular file"), std::string::npos);
  EXPECT_NE(error_of([&] { load_safetensors("/dev/zero"); }).find("not a regular file"), std::string::npos);
  write_file_atomic(dir / "f", std::string(100, 'x'));
  EXPECT_EQ(read_file(dir / "f", 100).size(), 100u);
  EXPECT_NE(error_of([&] { read_file(dir / "f", 99); }).find("100 bytes, more than the 99"), std::string::npos);
}

TEST(AtomicFile, LeavesNoTemporaryFilesAndReplacesWhole) {
  TempDir dir;
  write_file_atomic(dir / "f", "first");
  write_file_atomic(dir / "f", "second");
  EXPECT_EQ(read_file(dir / "f"), "second");
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.str())) (void)e, ++files;
  EXPECT_EQ(files, 1);
  EXPECT_THROW(write_file_atomic(dir / "no/such/dir/f", "x"), std::runtime_error);
}

TEST(AtomicFile, StaleTemporariesOfDeadProcessesAreRemoved) {
  TempDir dir;
  write_file_atomic(dir / "checkpoint.safetensors.tmp.999999999", "left by a killed writer");  // no such pid
  write_file_atomic(dir / ("state.tmp." + std::to_string(::getpid())), "ours, still writing");
  write_file_atomic(dir / "notes.tmp.txt", "not a temporary of ours");
  EXPECT_EQ(remove_stale_temporaries(dir.str()), 1);
  EXPECT_FALSE(std::filesystem::exists(dir / "checkpoint.safetensors.tmp.999999999"));
  EXPECT_TRUE(std::filesystem::exists(dir / ("state.tmp." + std::to_string(::getpid()))));
  EXPECT_TRUE(std::filesystem::exists(dir / "notes.tmp.txt"));
}

TEST(Checkpoint, RoundTripsWeightsAndDescription) {
  TempDir dir;
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", 1, 12);
  info.schedule = ScheduleConfig{BetaSchedule::cosine, 200};
  info.objective = Objective::x0;
  info.data = DataInfo{"unit", 1, 12, 10};
  info.step = 42;
  torch::manual_seed(0);
  UNet net(info.model);
  {  // make the output non-zero (conv_out starts at zero)
    torch::NoGradGuard g;
    for (auto& p : net->parameters()) p.add_(torch::randn_like(p) * 0.1);
  }
  save_checkpoint(dir / "c.safetensors", net, info);
  auto loaded = load_checkpoint(dir / "c.safetensors", torch::kCPU);
  EXPECT_EQ(to_json(loaded.info.model), to_json(info.model));
  EXPECT_EQ(loaded.info.schedule.kind, BetaSchedule::cosine);
  EXPECT_EQ(loaded.info.schedule.timesteps, 200);
  EXPECT_EQ(loaded.info.objective, Objective::x0);
  EXPECT_EQ(loaded.info.data.num_classes, 10);
  EXPECT_EQ(loaded.info.step, 42);
  net->eval();
  auto x = torch::randn({2, 1, 12, 12});
  auto t = torch::tensor({3, 150}, torch::kLong);
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(net->forward(x, t), loaded.model->forward(x, t)));
}

TEST(Checkpoint, MissingOrForeignFilesAreClearErrors) {
  TempDir dir;
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "nope.safetensors", torch::kCPU); }).find("does not exist"),
            std::string::npos);
  save_safetensors(dir / "foreign.safetensors", {{"w", torch::ones({2})}}, {});
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "foreign.safetensors", torch::kCPU); }).find("not a diffuse checkpoint"),
            std::string::npos);
  // Right metadata, wrong weights: the errors name the file and the tensor.
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", 1, 8);
  info.data = DataInfo{"unit", 1, 8, 0};
  UNet net(info.model);
  auto state = named_state(*net);
  save_safetensors(dir / "partial.safetensors", {state.begin() + 1, state.end()}, checkpoint_metadata(info));
  const auto missing = error_of([&] { load_checkpoint(dir / "partial.safetensors", torch::kCPU); });
  EXPECT_NE(missing.find("partial.safetensors"), std::string::npos) << missing;
  EXPECT_NE(missing.find("no tensor named '" + state.front().first + "'"), std::string::npos) << missing;
  state.back().second = torch::ones({3});
  save_safetensors(dir / "shape.safetensors", state, checkpoint_metadata(info));
  const auto shape = error_of([&] { load_checkpoint(dir / "shape.safetensors", torch::kCPU); });
  EXPECT_NE(shape.find(state.back().first + "' has shape [3]"), std::string::npos) << shape;
  // integers where weights belong, NaN weights, a step that is not a number
  state = named_state(*net);
  state.front().second = state.front().second.to(torch::kInt32);
  save_safetensors(dir / "int.safetensors", state, checkpoint_metadata(info));
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "int.safetensors", torch::kCPU); }).find("not floating-point"),
            std::string::npos);
  state = named_state(*net);
  state.front().second = torch::full_like(state.front().second, NAN);
  save_safetensors(dir / "nan.safetensors", state, checkpoint_metadata(info));
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "nan.safetensors", torch::kCPU); }).find("holds NaN or Inf"),
            std::string::npos);
  auto metadata = checkpoint_metadata(info);
  metadata["step"] = "1e3";
  save_safetensors(dir / "step.safetensors", named_state(*net), metadata);
  EXPECT_NE(error_of([&] { load_checkpoint(dir / "step.safetensors", torch::kCPU); }).find("not a whole number"),
            std::string::npos);
}

TEST(Checkpoint, ScheduleMetadataIsBoundedBeforeAnyTableIsBuilt) {
  TempDir dir;
  CheckpointInfo info;
  info.model = unet_config_by_name("tiny", 1, 8);
  info.data = DataInfo{"unit", 1, 8, 0};
  UNet net(info.model);
  auto write_with_schedule = [&](const nlohmann::json& schedule) {
    auto metadata = checkpoint_metadata(info);
    metadata["schedule"] = schedule.dump();
    save_safetensors(dir / "s.safetensors", named_state(*net), metadata);
    return error_of([&] { load_checkpoint(dir / "s.safetensors", torch::kCPU); });
  };
  const auto huge =
      write_with_schedule({{"kind", "linear"}, {"timesteps", 1000000000}, {"beta_start", 1e-4}, {"beta_end", 0.02}});
  EXPECT_NE(huge.find("schedule.timesteps = 1000000000: must be in [1, 100000]"), std::string::npos) << huge;
  // a float where an integer belongs: refused, not converted (3e29 → int64 is undefined behaviour)
  const auto fractional =
      write_with_schedule({{"kind", "linear"}, {"timesteps", 3.3e29}, {"beta_start", 1e-4}, {"beta_end", 0.02}});
  EXPECT_NE(fractional.find("field 'timesteps': expected an integer, got 3.3e+29"), std::string::npos) << fractional;
  const auto beta =
      write_with_schedule({{"kind", "linear"}, {"timesteps", 10}, {"beta_start", 1e-4}, {"beta_end", 2.0}});
  EXPECT_NE(beta.find("outside (0, 1)"), std::string::npos) << beta;
  // a trained table: T entries, kept exactly
  info.schedule.kind = BetaSchedule::trained;
  info.schedule.timesteps = 3;
  info.schedule.trained_betas = {0.1, 0.2, 0.3};
  save_checkpoint(dir / "t.safetensors", net, info);
  EXPECT_EQ(load_checkpoint(dir / "t.safetensors", torch::kCPU).info.schedule.trained_betas,
            info.schedule.trained_betas);
  const auto short_table = write_with_schedule(
      {{"kind", "trained"}, {"timesteps", 4}, {"beta_start", 0.1}, {"beta_end", 0.3}, {"betas", {0.1, 0.2}}});
  EXPECT_NE(short_table.find("2 trained betas for T = 4"), std::string::npos) << short_table;
}

TEST(Png, GridEncodesAndDecodesToTheSamePixels) {
  TempDir dir;
  auto images = torch::rand({5, 3, 6, 7}) * 2 - 1;
  save_grid_png(dir / "g.png", images, /*nrow=*/3);
  int w = 0, h = 0, c = 0;
  unsigned char* px = stbi_load((dir / "g.png").c_str(), &w, &h, &c, 0);
  ASSERT_NE(px, nullptr);
  EXPECT_EQ(w, 3 * (7 + 2) + 2);
  EXPECT_EQ(h, 2 * (6 + 2) + 2);
  EXPECT_EQ(c, 3);
  // pixel (row 2, col 2) of image 0, channel 1
  const auto expected = to_uint8(images[0][1][0][0]).item<uint8_t>();
  EXPECT_EQ(px[(2 * w + 2) * 3 + 1], expected);
  stbi_image_free(px);
  auto back = load_image_u8(dir / "g.png", 3, 0);
  EXPECT_EQ(back.sizes(), (std::vector<int64_t>{3, h, w}));
  EXPECT_EQ(to_uint8(from_uint8(back)).equal(back), true);
}
