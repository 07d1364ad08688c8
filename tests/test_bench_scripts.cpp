// The benchmark scripts that only a GPU machine runs for real, checked here on made-up input so
// that a GPU session does not spend its device time on a broken script.
#include <gtest/gtest.h>

#include <string>

#include "diffuse/io/atomic_file.h"
#include "diffuse_build_config.h"
#include "support/run_command.h"
#include "support/temp_dir.h"

using diffuse::testing::run_command;
using diffuse::testing::TempDir;

TEST(BenchScripts, NcuSummarySumsKernelTimesByKindAndSkipsTheProgramsOwnOutput) {
  if (run_command("/usr/bin/python3 -c 'import csv'").status != 0) GTEST_SKIP() << "no /usr/bin/python3";
  TempDir dir;
  // ncu --csv --page raw: a header row, a units row, one row per kernel; the program's own lines
  // and ncu's ==PROF== lines around them
  diffuse::write_file_atomic(
      dir / "ncu.csv",
      "==PROF== Connected to process 1\n"
      "infer  ddpm-cifar10  256 bf16\n"
      "\"ID\",\"Kernel Name\",\"Block Size\",\"gpu__time_duration.sum\"\n"
      "\"\",\"\",\"\",\"usecond\"\n"
      "\"0\",\"void at::native::distribution_elementwise_grid_stride_kernel<float>\",\"(256, 1, 1)\",\"900\"\n"
      "\"1\",\"sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc\",\"(384, 1, 1)\",\"1,500\"\n"
      "\"2\",\"void group_norm_nhwc_kernel<__nv_bfloat16>\",\"(512, 1, 1)\",\"300\"\n"
      "\"3\",\"sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc\",\"(384, 1, 1)\",\"1,500\"\n"
      "\"4\",\"void group_norm_nhwc_kernel<__nv_bfloat16>\",\"(512, 1, 1)\",\"300\"\n"
      "\"5\",\"void at::elementwise_kernel<128, 4, void at::gpu_kernel_impl_nocast<at::CUDAFunctor_add<c10::BFloat16>>>\",\"(128, 1, 1)\",\"400\"\n"
      "==PROF== Disconnected from process 1\n");
  const auto r = run_command("/usr/bin/python3 " + std::string(DIFFUSE_SOURCE_DIR) + "/bench/ncu_summary.py " +
                             dir / "ncu.csv" + " --passes 2");
  ASSERT_EQ(r.status, 0) << r.output;
  // two passes: 1.5 ms of convolution, 0.3 ms of GroupNorm and 0.2 ms of additions each (an
  // element-wise kernel whose name says "nocast", not a cast); the initialisation apart
  EXPECT_NE(r.output.find("2.00 ms of GPU time per pass (and 0.90 ms of weight initialisation once)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("| convolution | 1.500 | 75.0 % |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| GroupNorm (own kernel) | 0.300 | 15.0 % |"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("| element-wise | 0.200 | 10.0 % |"), std::string::npos) << r.output;
  // a training step draws noise every step: random-number kernels are then a per-pass kind
  const auto t = run_command("/usr/bin/python3 " + std::string(DIFFUSE_SOURCE_DIR) + "/bench/ncu_summary.py " +
                             dir / "ncu.csv" + " --passes 2 --random-per-pass");
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("2.45 ms of GPU time per pass\n"), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("| random numbers (noise) | 0.450 |"), std::string::npos) << t.output;
}
