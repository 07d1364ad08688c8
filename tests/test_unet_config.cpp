// The general U-Net config: presets keep their networks, older checkpoints' configs still load,
// every field is bounded before anything is built, and each option computes what it says
// (heads, the embedding's conventions, the asymmetric pad, extra input channels) against an
// independent computation.
#include <gtest/gtest.h>

#include <cmath>

#include "diffuse/model/unet.h"
#include "diffuse/model/unet_shape.h"

using namespace diffuse;

namespace F = torch::nn::functional;

TEST(UNetConfig, PresetsKeepTheirParameterCounts) {
  EXPECT_EQ(UNet(unet_config_by_name("mnist", 1, 28))->parameter_count(), 1112801);
  EXPECT_EQ(UNet(unet_config_by_name("ddpm-cifar10", 3, 32))->parameter_count(), 35746307);
}

TEST(UNetConfig, AReshapedPresetChangesOnlyTheGivenFields) {
  const auto mnist = unet_config_by_name("mnist", 1, 28);
  EXPECT_EQ(to_json(reshaped(mnist, UNetShape{})), to_json(mnist));
  UNetShape shape;
  shape.channels = 16;
  shape.channel_mult = {1, 2};
  shape.attention_resolutions = {0};  // none
  const auto small = reshaped(mnist, shape);
  EXPECT_EQ(small.channels, 16);
  EXPECT_EQ(small.channel_mult, (std::vector<int64_t>{1, 2}));
  EXPECT_TRUE(small.attention_resolutions.empty());
  EXPECT_EQ(small.num_res_blocks, mnist.num_res_blocks);
  EXPECT_EQ(small.norm_groups, mnist.norm_groups);
  // 16 · 1 + 16 · 2 levels, one res block each: fewer parameters than the preset, and it runs
  UNet net(small);
  EXPECT_LT(net->parameter_count(), UNet(mnist)->parameter_count());
  EXPECT_EQ(net->forward(torch::zeros({2, 1, 28, 28}), torch::tensor({0, 999})).sizes(),
            (std::vector<int64_t>{2, 1, 28, 28}));
  shape.channels = 12;  // norm_groups 8 does not divide 12
  EXPECT_THROW(reshaped(mnist, shape), std::invalid_argument);
}

TEST(UNetConfig, AConfigWrittenBeforeTheGeneralFieldsLoadsWithTheirDefaults) {
  nlohmann::json old = {{"name", "mnist"},          {"in_channels", 1},   {"image_size", 28},
                        {"channels", 32},           {"channel_mult", {1, 2, 2}}, {"num_res_blocks", 1},
                        {"attention_resolutions", {7}}, {"dropout", 0.0}, {"norm_groups", 8},
                        {"num_classes", 0}};
  const auto c = unet_config_from_json(old);
  EXPECT_EQ(to_json(c), to_json(unet_config_by_name("mnist", 1, 28)));
  EXPECT_TRUE(c.mid_attention);
  EXPECT_EQ(c.attention_head_dim, 0);
  EXPECT_EQ(c.freq_shift, 1);
  EXPECT_EQ(c.downsample_padding, DownsamplePadding::symmetric);
}

TEST(UNetConfig, EveryFieldIsBoundedWithAMessageNamingIt) {
  auto refused = [](const std::string& field, const nlohmann::json& value) {
    auto j = to_json(unet_config_by_name("mnist", 1, 28));
    j[field] = value;
    try {
      unet_config_from_json(j);
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(refused("norm_groups", 0).find("norm_groups = 0"), std::string::npos);
  EXPECT_NE(refused("norm_groups", 5).find("must divide every width"), std::string::npos);
  EXPECT_NE(refused("channels", 30000).find("channels = 30000"), std::string::npos);
  EXPECT_NE(refused("num_res_blocks", 1000000).find("num_res_blocks"), std::string::npos);
  EXPECT_NE(refused("num_classes", 1e12).find("num_classes"), std::string::npos);
  EXPECT_NE(refused("image_size", 30000).find("image_size"), std::string::npos);
  EXPECT_NE(refused("dropout", -0.5).find("dropout"), std::string::npos);
  EXPECT_NE(refused("attention_head_dim", 24).find("attention_head_dim"), std::string::npos);
  EXPECT_NE(refused("cross_attention_dim", 5000).find("cross_attention_dim = 5000"), std::string::npos);
  EXPECT_NE(refused("downsample_padding", "both").find("downsample padding"), std::string::npos);
  EXPECT_NE(refused("channel_mult", nlohmann::json::array()).find("channel_mult"), std::string::npos);
  EXPECT_EQ(refused("attention_head_dim", 16), "accepted");
}

TEST(UNetConfig, TimestepEmbeddingFollowsItsConventions) {
  const auto t = torch::tensor({0, 7, 999}, torch::kLong);
  const int64_t dim = 8, h = 4;
  for (bool flip : {false, true}) {
    for (int64_t shift : {0, 1}) {
      const auto emb = timestep_embedding(t, dim, flip, shift).to(torch::kFloat64);
      for (int64_t b = 0; b < 3; ++b) {
        for (int64_t k = 0; k < h; ++k) {
          const double arg = static_cast<double>(t[b].item<int64_t>()) * std::pow(10000.0, -double(k) / double(h - shift));
          const double first = flip ? std::cos(arg) : std::sin(arg), second = flip ? std::sin(arg) : std::cos(arg);
          EXPECT_NEAR(emb[b][k].item<double>(), first, 1e-4) << "flip " << flip << " shift " << shift;
          EXPECT_NEAR(emb[b][h + k].item<double>(), second, 1e-4) << "flip " << flip << " shift " << shift;
        }
      }
    }
  }
}

TEST(UNetConfig, MultiHeadAttentionMatchesAFloat64Reference) {
  // h = x + W_o · concat_heads(V_h softmax(K_hᵀ Q_h / √(C/n))), on float64 by hand.
  torch::manual_seed(3);
  const int64_t B = 2, C = 16, H = 3, W = 4, heads = 4, d = C / heads, N = H * W;
  AttentionBlock block(C, /*groups=*/4, /*eps=*/1e-6, heads);
  for (auto& p : block->parameters()) {
    torch::NoGradGuard no_grad;
    p.normal_(0.0, 0.3);
  }
  const auto x = torch::randn({B, C, H, W});
  const auto out = block->forward(x).to(torch::kFloat64);
  auto params = block->named_parameters();
  auto x64 = x.to(torch::kFloat64);
  auto normed = F::group_norm(x64, F::GroupNormFuncOptions(4).weight(params["norm.weight"].to(torch::kFloat64))
                                       .bias(params["norm.bias"].to(torch::kFloat64)).eps(1e-6));
  auto qkv = F::conv2d(normed, params["qkv.weight"].to(torch::kFloat64),
                       F::Conv2dFuncOptions().bias(params["qkv.bias"].to(torch::kFloat64))).reshape({B, 3 * C, N});
  auto attended = torch::zeros({B, C, N}, torch::kFloat64);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t head = 0; head < heads; ++head) {
      auto q = qkv[b].narrow(0, head * d, d), k = qkv[b].narrow(0, C + head * d, d), v = qkv[b].narrow(0, 2 * C + head * d, d);
      auto weights = torch::softmax(torch::matmul(q.t(), k) / std::sqrt(double(d)), 1);  // [N query, N key]
      attended[b].narrow(0, head * d, d).copy_(torch::matmul(v, weights.t()));
    }
  }
  auto expected = x64 + F::conv2d(attended.reshape({B, C, H, W}), params["proj_out.weight"].to(torch::kFloat64),
                                  F::Conv2dFuncOptions().bias(params["proj_out.bias"].to(torch::kFloat64)));
  EXPECT_LT((out - expected).abs().max().item<double>(), 1e-4);
}

TEST(UNetConfig, AsymmetricDownsamplingPadsRightAndBottomOnly) {
  torch::manual_seed(4);
  Downsample down(8, DownsamplePadding::asymmetric);
  for (int64_t size : {8, 7}) {
    const auto x = torch::randn({1, 8, size, size});
    const auto y = down->forward(x);
    EXPECT_EQ(y.size(2), size / 2);
    auto params = down->named_parameters();
    const auto expected = F::conv2d(F::pad(x, F::PadFuncOptions({0, 1, 0, 1})), params["conv.weight"],
                                    F::Conv2dFuncOptions().bias(params["conv.bias"]).stride(2));
    EXPECT_LT((y - expected).abs().max().item<double>(), 1e-5) << "size " << size;
  }
}

TEST(UNetConfig, TheGeneralOptionsBuildNetworksThatRun) {
  auto c = unet_config_by_name("tiny", 3, 16);
  c.attention_head_dim = 4;
  c.mid_attention = false;
  c.norm_eps = 1e-6;
  c.flip_sin_to_cos = true;
  c.freq_shift = 0;
  c.downsample_padding = DownsamplePadding::asymmetric;
  c.extra_in_channels = 2;
  UNet net(c);
  const auto x = torch::randn({2, 3, 16, 16}), t = torch::tensor({1, 500}, torch::kLong);
  const auto condition = torch::randn({2, 2, 16, 16});
  EXPECT_EQ(net->forward(x, t, condition).sizes(), x.sizes());
  // no condition: ∅, zero channels; a condition of other channels or size is refused
  EXPECT_TRUE(torch::equal(net->forward(x, t), net->forward(x, t, torch::zeros_like(condition))));
  EXPECT_TRUE(torch::equal(net->null_condition(2, torch::kCPU), torch::zeros({2, 2, 16, 16})));
  EXPECT_THROW(net->forward(x, t, torch::randn({2, 3, 16, 16})), c10::Error);
  EXPECT_THROW(net->forward(x, t, torch::randn({2, 2, 8, 8})), c10::Error);
  // without the middle attention block, exactly its parameters fewer
  auto with_mid = c;
  with_mid.mid_attention = true;
  const int64_t width = c.level_channels(c.levels() - 1);
  const int64_t attention_parameters = 2 * width + (3 * width * width + 3 * width) + (width * width + width);
  EXPECT_EQ(UNet(with_mid)->parameter_count() - net->parameter_count(), attention_parameters);
  // the config round-trips through JSON with every field
  EXPECT_EQ(to_json(unet_config_from_json(to_json(c))), to_json(c));
}
