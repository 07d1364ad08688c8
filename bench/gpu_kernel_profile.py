#!/usr/bin/env python3
"""Where one U-Net forward spends its GPU time: the reference network (bench/reference_unet.py, the
same operators diffuse calls through LibTorch) under torch.profiler, kernel time summed into a
few kinds (convolution, normalisation, attention products, casts, element-wise, ...).

  gpu_kernel_profile.py [--model ddpm-cifar10] [--batch-size 256] [--weights fp32|bf16]
                        [--memory-format nchw|channels-last] [--top 12]

--weights fp32 runs float32 weights under bf16 autocast (what `--precision bf16` does);
--weights bf16 casts the network to bf16 once and runs without autocast.
"""
import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_unet  # noqa: E402

# Kernel-name fragments → kind, first match wins (cuDNN, cuBLAS and ATen's own kernel names).
KINDS = [
    ("layout transform", ("nchwToNhwc", "nhwcToNchw", "transpose")),
    ("convolution", ("conv", "implicit", "xmma_fprop", "fprop", "dgrad", "wgrad", "cudnn")),
    ("matrix product", ("gemm", "cutlass", "cublas", "matmul")),
    ("normalisation", ("group_norm", "GroupNorm", "RowwiseMoments", "ComputeFusedParams", "Welford")),
    ("softmax", ("softmax",)),
    ("cast", ("to_copy", "copy_kernel", "direct_copy", "bfloat16_copy")),
    ("upsample", ("upsample",)),
    ("cat", ("CatArray", "cat_")),
    ("element-wise", ("elementwise", "vectorized", "unrolled", "silu", "add", "mul")),
]


def kind_of(name):
    for kind, fragments in KINDS:
        if any(f in name for f in fragments):
            return kind
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ddpm-cifar10", choices=sorted(reference_unet.CONFIGS))
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--weights", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--memory-format", default="nchw", choices=["nchw", "channels-last"])
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_kernel_profile.py: no CUDA device")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = reference_unet.UNet(a.model).to(dev).eval()
    if a.weights == "bf16":
        model = model.to(torch.bfloat16)
    fmt = torch.channels_last if a.memory_format == "channels-last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    _, _, _, _, _, _, cin, size = reference_unet.CONFIGS[a.model]
    x = torch.randn(a.batch_size, cin, size, size, device=dev).to(memory_format=fmt)
    t = torch.randint(0, 1000, (a.batch_size,), device=dev)
    if a.weights == "bf16":
        x = x.to(torch.bfloat16)

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.weights == "fp32"):
            model(x, t)

    for _ in range(3):
        forward()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(a.repeat):
            forward()
        torch.cuda.synchronize()
    per_kind, per_kernel = collections.Counter(), collections.Counter()
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            us = e.time_range.elapsed_us()
            per_kind[kind_of(e.name)] += us / a.repeat
            per_kernel[e.name] += us / a.repeat
    total = sum(per_kind.values())
    print(f"# {a.model}, batch {a.batch_size}, weights {a.weights}, {a.memory_format}: "
          f"{total / 1000:.2f} ms of kernel time per forward ({torch.cuda.get_device_name(0)}, torch {torch.__version__})")
    print("| kind | ms per forward | share |\n| --- | --- | --- |")
    for kind, us in per_kind.most_common():
        print(f"| {kind} | {us / 1000:.3f} | {100 * us / total:.1f} % |")
    print(f"\ntop {a.top} kernels:")
    for name, us in per_kernel.most_common(a.top):
        print(f"  {us / 1000:8.3f} ms  {kind_of(name):>14}  {name[:110]}")


if __name__ == "__main__":
    main()
