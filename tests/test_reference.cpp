// The Python reference (bench/reference_unet.py, on Debian's python3-torch) builds the same
// network: equal parameter counts, equal outputs for the same weights, equal FLOP counts.
// Skipped where /usr/bin/python3 has no torch.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "diffuse/checkpoint/checkpoint.h"
#include "diffuse/io/safetensors.h"
#include "diffuse/model/unet.h"
#include "diffuse/model/unet_flops.h"
#include "diffuse_build_config.h"
#include "support/networks.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using namespace diffuse;
using diffuse::testing::run_command;

namespace {

const std::string kReference = std::string("/usr/bin/python3 ") + DIFFUSE_SOURCE_DIR + "/bench/reference_unet.py";

bool python_torch_available() {
  static const bool available = run_command("/usr/bin/python3 -c 'import torch'").status == 0;
  return available;
}

}  // namespace

TEST(Reference, SameWeightsGiveTheSameOutput) {
  if (!python_torch_available()) GTEST_SKIP() << "/usr/bin/python3 has no torch (apt install python3-torch)";
  for (const std::string name : {"tiny", "mnist"}) {
    auto net = diffuse::testing::random_unet(name, 1, 28, 3);
    auto x = torch::randn({3, 1, 28, 28});
    auto t = torch::tensor({0, 417, 999}, torch::kLong);
    torch::Tensor out;
    {
      torch::NoGradGuard no_grad;
      out = net->forward(x, t);
    }
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (auto& [n, v] : named_state(*net)) tensors.emplace_back("model/" + n, v);
    tensors.emplace_back("x", x);
    tensors.emplace_back("t", t);
    tensors.emplace_back("out", out);
    diffuse::testing::TempDir dir;
    save_safetensors(dir / "check.safetensors", tensors,
                     {{"model", name}, {"in_channels", "1"}, {"image_size", "28"},
                      {"parameters", std::to_string(net->parameter_count())}});
    auto r = run_command(kReference + " check " + (dir / "check.safetensors"));
    EXPECT_EQ(r.status, 0) << name << ": " << r.output;
  }
}

TEST(Reference, FlopCountsAgreeWithTheLayersRealShapes) {
  if (!python_torch_available()) GTEST_SKIP() << "/usr/bin/python3 has no torch (apt install python3-torch)";
  for (const std::string name : {"tiny", "mnist", "ddpm-cifar10"}) {
    auto r = run_command(kReference + " flops --model " + name);
    ASSERT_EQ(r.status, 0) << r.output;
    const auto j = nlohmann::json::parse(r.output);
    const bool rgb = name == "ddpm-cifar10";
    const auto config = unet_config_by_name(name, rgb ? 3 : 1, rgb ? 32 : 28);
    EXPECT_EQ(j.at("parameters").get<int64_t>(), UNet(config)->parameter_count()) << name;
    EXPECT_EQ(j.at("forward_flops_per_image").get<double>(), unet_forward_flops(config)) << name;
  }
}
