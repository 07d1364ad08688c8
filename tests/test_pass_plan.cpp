// The op layer's plan of a forward pass (runtime/ops.h): made once from the pass's input and the
// runtime settings, held for the ops of that pass on its thread, and what each op reads.
#include <gtest/gtest.h>

#include <thread>

#include "diffuse/model/unet.h"
#include "diffuse/runtime/onednn_conv.h"
#include "diffuse/runtime/ops.h"
#include "diffuse/runtime/settings.h"
#include "diffuse/util/environment.h"

using namespace diffuse;

TEST(PassPlan, TheInputDecidesTheLayoutAndTheKernels) {
  const auto x = torch::randn({2, 1, 28, 28});
  // float32 on the CPU: channel-blocked where oneDNN may take it and the widths are whole blocks
  const auto blocked = plan_forward_pass(x, MemoryFormat::nchw, 32);
  const bool onednn = conv_kernels() == ConvKernels::onednn && onednn_conv_built();
  EXPECT_EQ(blocked.path, onednn ? KernelPath::cpu_blocked : KernelPath::aten) << to_string(blocked.path);
  EXPECT_EQ(plan_forward_pass(x, MemoryFormat::nchw, 20).path, KernelPath::aten);  // 20 is not whole blocks
  EXPECT_EQ(plan_forward_pass(x, MemoryFormat::channels_last, 32).path, KernelPath::aten);
  {  // bf16 autocast on the CPU: the NHWC or the NCHW kernels, by the format asked for
    AutocastScope autocast(torch::kCPU, Precision::bf16);
    EXPECT_EQ(plan_forward_pass(x, MemoryFormat::channels_last, 32).path, KernelPath::cpu_bf16_nhwc);
    EXPECT_EQ(plan_forward_pass(x, MemoryFormat::nchw, 24).path, KernelPath::cpu_bf16_nchw);
  }
  EXPECT_EQ(plan_forward_pass(x, MemoryFormat::channels_last, 32).layout, MemoryFormat::channels_last);
}

TEST(PassPlan, TheSettingsAreReadOncePerPass) {
  const auto x = torch::randn({1, 1, 8, 8});
  const bool setting = runtime_settings().fused_cat;  // DIFFUSE_FUSED_CAT as this run has it
  const auto before = plan_forward_pass(x, MemoryFormat::nchw, 16);
  EnvironmentSwitch off("DIFFUSE_FUSED_CAT", "0", /*on=*/true);
  // a pass planned before the switch keeps its setting; the next pass reads the new one
  EXPECT_EQ(before.fused_cat, setting);
  EXPECT_FALSE(plan_forward_pass(x, MemoryFormat::nchw, 16).fused_cat);
  off.set(false);
  EXPECT_EQ(plan_forward_pass(x, MemoryFormat::nchw, 16).fused_cat, setting);
}

TEST(PassPlan, APassHoldsItsPlanForItsThreadAndRestoresTheOuterOne) {
  EXPECT_EQ(current_pass_plan(), nullptr);
  PassPlan outer_plan;
  outer_plan.path = KernelPath::cpu_bf16_nchw;
  {
    const ForwardPass outer(outer_plan);
    ASSERT_NE(current_pass_plan(), nullptr);
    EXPECT_EQ(current_pass_plan()->path, KernelPath::cpu_bf16_nchw);
    {
      PassPlan inner_plan;
      inner_plan.path = KernelPath::aten;
      const ForwardPass inner(inner_plan);
      EXPECT_EQ(current_pass_plan()->path, KernelPath::aten);
      std::thread other([] { EXPECT_EQ(current_pass_plan(), nullptr); });  // another thread: no pass
      other.join();
    }
    EXPECT_EQ(current_pass_plan()->path, KernelPath::cpu_bf16_nchw);
  }
  EXPECT_EQ(current_pass_plan(), nullptr);
}

// The ops follow the pass's plan, not the tensor: a bf16 NCHW tensor goes through the fused bf16
// norm kernel in a cpu-bf16-nchw pass, and through LibTorch's operators in an aten pass, which
// give exactly SiLU(GroupNorm(x)) computed in float32.
TEST(PassPlan, TheOpsTakeTheirKernelFromThePlan) {
  torch::manual_seed(4);
  torch::nn::GroupNorm norm(torch::nn::GroupNormOptions(4, 32));
  const auto x = torch::randn({2, 32, 6, 6}).to(torch::kBFloat16);
  const auto reference = torch::silu(norm(x.to(torch::kFloat32)));
  auto under = [&](KernelPath path) {
    PassPlan plan;
    plan.path = path;
    const ForwardPass pass(plan);
    return norm_silu(norm, x);
  };
  const auto aten = under(KernelPath::aten), fused = under(KernelPath::cpu_bf16_nchw);
  EXPECT_TRUE(torch::equal(aten, reference));        // LibTorch's operators, in float32
  EXPECT_EQ(fused.scalar_type(), torch::kBFloat16);  // the fused kernel: bf16 in and out
  EXPECT_LT((fused.to(torch::kFloat32) - reference).abs().max().item<double>(), 0.05);
}
