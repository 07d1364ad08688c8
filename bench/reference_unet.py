#!/usr/bin/env python3
"""The DDPM U-Net of diffuse, written again in plain PyTorch: the reference that `diffuse bench` is
compared against (bench/compare), and a check that both build the same network.

Module and parameter names follow the C++ model (src/model/unet.cpp, unet_blocks.cpp), so a
state dict written by `diffuse` loads here unchanged.

  reference_unet.py bench --model mnist --what train|infer|sample [--batch-size B] [--steps S]
                          [--repeat R] [--precision fp32|bf16] [--device cpu|cuda] [--compile]
  reference_unet.py check FILE.safetensors    (weights, input and C++ output written by the C++ test)
  reference_unet.py flops --model NAME        (FLOPs per image counted from the layers' real shapes)

Runs on Debian's python3-torch (1.13) and on newer PyTorch.
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys
import time

try:
    import torch
except ModuleNotFoundError:
    sys.exit(f"reference_unet.py needs PyTorch, which {sys.executable} does not have: run it with "
             "/usr/bin/python3 (Debian's python3-torch, installed by scripts/setup) or a Python with torch")
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {  # name: (channels, channel_mult, num_res_blocks, attention at, dropout, groups, in_channels, size)
    "tiny": (8, (1, 2), 1, "half", 0.0, 4, 1, 28),
    "mnist": (32, (1, 2, 2), 1, "quarter", 0.0, 8, 1, 28),
    "ddpm-cifar10": (128, (1, 2, 2, 2), 2, 16, 0.1, 32, 3, 32),
}


def down(n):  # stride-2 3x3 convolution with padding 1
    return (n + 1) // 2


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(10000.0) / (half - 1)))
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def group_norm(norm, x):  # in float32 under bf16 autocast, as the C++ model does
    return norm(x.to(norm.weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim, dropout, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_proj = nn.Linear(tdim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, emb):
        h = self.conv1(F.silu(group_norm(self.norm1, x)))
        h = h + self.time_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(group_norm(self.norm2, h))))
        return (self.shortcut(x) if self.shortcut is not None else x) + h


class Attention(nn.Module):
    def __init__(self, c, groups):
        super().__init__()
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)
        self.flops = 0  # set by the flop counter

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(group_norm(self.norm, x)).reshape(B, 3, C, H * W).unbind(1)
        w = torch.softmax((q.transpose(1, 2) @ k / math.sqrt(C)).float(), dim=-1)  # [B, N, N]
        h = v @ w.to(v.dtype).transpose(1, 2)
        self.flops = 2 * 2 * (H * W) ** 2 * C  # the two products, per image
        return x + self.proj_out(h.reshape(B, C, H, W))


class UNet(nn.Module):
    def __init__(self, name, in_channels=None, size=None, num_classes=0):
        super().__init__()
        ch, mult, nres, attn, dropout, groups, cin0, size0 = CONFIGS[name]
        cin = in_channels or cin0
        size = size or size0
        attn = {"half": down(size), "quarter": down(down(size))}.get(attn, attn)
        tdim = 4 * ch
        self.ch, self.num_classes = ch, num_classes
        self.time_fc1 = nn.Linear(ch, tdim)
        self.time_fc2 = nn.Linear(tdim, tdim)
        if num_classes:
            self.label_embedding = nn.Embedding(num_classes + 1, tdim)
        self.conv_in = nn.Conv2d(cin, ch, 3, padding=1)
        self.down_stages, self.up_stages = [], []  # (kind, module names) in order
        skips, width, res = [ch], ch, size
        for level, m in enumerate(mult):
            out = ch * m
            for b in range(nres):
                name = f"down_{level}_{b}"
                setattr(self, name + "_res", ResBlock(width, out, tdim, dropout, groups))
                width = out
                has_attn = res == attn
                if has_attn:
                    setattr(self, name + "_attn", Attention(width, groups))
                self.down_stages.append(("res", name, has_attn))
                skips.append(width)
            if level != len(mult) - 1:
                setattr(self, f"down_{level}_downsample", nn.Conv2d(width, width, 3, stride=2, padding=1))
                self.down_stages.append(("down", f"down_{level}_downsample", False))
                skips.append(width)
                res = down(res)
        self.mid_res1 = ResBlock(width, width, tdim, dropout, groups)
        self.mid_attn = Attention(width, groups)
        self.mid_res2 = ResBlock(width, width, tdim, dropout, groups)
        resolutions = [size]
        for _ in mult[1:]:
            resolutions.append(down(resolutions[-1]))
        for level in reversed(range(len(mult))):
            out = ch * mult[level]
            for b in range(nres + 1):
                name = f"up_{level}_{b}"
                setattr(self, name + "_res", ResBlock(width + skips.pop(), out, tdim, dropout, groups))
                width = out
                has_attn = resolutions[level] == attn
                if has_attn:
                    setattr(self, name + "_attn", Attention(width, groups))
                self.up_stages.append(("res", name, has_attn))
            if level != 0:
                setattr(self, f"up_{level}_upsample", nn.Conv2d(width, width, 3, padding=1))
                self.up_stages.append(("up", f"up_{level}_upsample", False))
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = nn.Conv2d(width, cin, 3, padding=1)

    def state_dict_names(self):  # C++ names: "<module>.conv.weight" for the resamplers
        return {k.replace("_downsample.", "_downsample.conv.").replace("_upsample.", "_upsample.conv."): k
                for k in self.state_dict()}

    def forward(self, x, t, y=None):
        emb = self.time_fc2(F.silu(self.time_fc1(timestep_embedding(t, self.ch).to(self.time_fc1.weight.dtype))))
        if self.num_classes:
            if y is None:
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_embedding(y)
        h = self.conv_in(x)
        skips = [h]
        for kind, name, has_attn in self.down_stages:
            if kind == "down":
                h = getattr(self, name)(h)
            else:
                h = getattr(self, name + "_res")(h, emb)
                if has_attn:
                    h = getattr(self, name + "_attn")(h)
            skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)
        for kind, name, has_attn in self.up_stages:
            if kind == "up":
                h = getattr(self, name)(F.interpolate(h, size=skips[-1].shape[2:], mode="nearest"))
            else:
                h = getattr(self, name + "_res")(torch.cat([h, skips.pop()], 1), emb)
                if has_attn:
                    h = getattr(self, name + "_attn")(h)
        return self.conv_out(F.silu(group_norm(self.norm_out, h))).to(x.dtype)


# --- safetensors, read without the safetensors package --------------------------------------------
DTYPES = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "BF16": torch.bfloat16}


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=DTYPES[info["dtype"]]) if b > a else torch.empty(0)
        tensors[name] = t.reshape(info["shape"])
    return tensors, header.get("__metadata__", {})


def check(path):
    """Loads the C++ model's weights, input and output; prints and checks agreement."""
    tensors, meta = read_safetensors(path)
    model = UNet(meta["model"], int(meta["in_channels"]), int(meta["image_size"]))
    names = model.state_dict_names()
    weights = {names[k[len("model/"):]]: v for k, v in tensors.items() if k.startswith("model/")}
    missing = set(names.values()) - set(weights)
    if missing:
        print(f"check: missing weights {sorted(missing)[:5]}", file=sys.stderr)
        return 1
    model.load_state_dict(weights)
    model.eval()
    count = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(tensors["x"], tensors["t"])
    diff = (out - tensors["out"]).abs().max().item()
    scale = tensors["out"].abs().max().item()
    print(json.dumps({"parameters": count, "cpp_parameters": int(meta["parameters"]), "max_abs_diff": diff,
                      "max_abs_output": scale}))
    return 0 if count == int(meta["parameters"]) and diff <= 1e-4 * max(1.0, scale) else 1


def count_flops(model, x, t):
    """2 x multiply-adds of every convolution and linear layer, from the shapes they really see,
    plus the attention products (counted inside Attention)."""
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, nn.Conv2d):
            total[0] += 2 * m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out.shape[2] * out.shape[3]
        elif isinstance(m, nn.Linear):
            total[0] += 2 * m.in_features * m.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(x[:1], t[:1])
    for h in handles:
        h.remove()
    return total[0] + sum(m.flops for m in model.modules() if isinstance(m, Attention))


# --- the benchmark ---------------------------------------------------------------------------------
def linear_alpha_bar(T=1000):
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def bench(args):
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = UNet(args.model).to(device)
    if args.memory_format == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    _, _, _, _, _, _, cin, size = CONFIGS[args.model]
    B = args.batch_size
    x0 = torch.rand(B, cin, size, size, device=device) * 2 - 1
    ab = linear_alpha_bar().float().to(device)
    fwd = count_flops(model, x0, torch.zeros(B, dtype=torch.long, device=device))
    net = torch.compile(model) if args.compile else model
    bf16 = args.precision == "bf16"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if args.what == "train":
        ema = UNet(args.model).to(device)
        ema.load_state_dict(model.state_dict())
        ema_params = list(ema.parameters())
        params = list(model.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
        model.train()

        def run():
            t = torch.randint(0, 1000, (B,), device=device)
            noise = torch.randn_like(x0)
            a = ab[t].view(B, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            with autocast():
                loss = F.mse_loss(net(x_t, t).float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            with torch.no_grad():  # EMA: θ_ema ← d θ_ema + (1 − d) θ
                torch._foreach_mul_(ema_params, 0.999)
                torch._foreach_add_(ema_params, params, alpha=0.001)
        flops = 3 * fwd * B
    elif args.what == "infer":
        model.eval()
        t = torch.randint(0, 1000, (B,), device=device)

        def run():
            with torch.inference_mode(), autocast():
                net(x0, t)
        flops = fwd * B
    else:
        model.eval()
        S = args.steps
        ts = list(range(0, 1000, 1000 // S))[::-1]  # leading spacing
        x_T = torch.randn_like(x0)

        def run():
            with torch.inference_mode(), autocast():
                x = x_T
                for i, t in enumerate(ts):
                    a = ab[t]
                    a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=device)
                    eps = net(x, torch.full((B,), t, dtype=torch.long, device=device)).float()
                    x0_hat = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
                    eps = (x - a.sqrt() * x0_hat) / (1 - a).sqrt()
                    x = a_prev.sqrt() * x0_hat + (1 - a_prev).sqrt() * eps
                return x
        flops = S * fwd * B

    for _ in range(args.warmup):
        run()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - t0)
    med = statistics.median(seconds)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else
            __import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"model": args.model, "what": args.what, "device": args.device, "precision": args.precision,
                      "memory_format": args.memory_format, "batch_size": B, "compile": args.compile,
                      "steps": args.steps if args.what == "sample" else 0, "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
                      "forward_gflops_per_image": fwd / 1e9, "seconds": seconds, "median_seconds": med,
                      "images_per_second": B / med, "achieved_gflops_per_second": flops / med / 1e9,
                      "peak_memory_mib": peak / 2**20}))
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--model", default="mnist", choices=sorted(CONFIGS))
    b.add_argument("--what", default="train", choices=["train", "infer", "sample"])
    b.add_argument("--batch-size", type=int, default=64)
    b.add_argument("--steps", type=int, default=50)
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    b.add_argument("--memory-format", default="nchw", choices=["nchw", "channels-last"])
    b.add_argument("--device", default="cpu")
    b.add_argument("--compile", action="store_true", help="torch.compile the network (PyTorch 2)")
    c = sub.add_parser("check")
    c.add_argument("file")
    f = sub.add_parser("flops")
    f.add_argument("--model", default="mnist", choices=sorted(CONFIGS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.cmd == "bench":
        return bench(args)
    if args.cmd == "check":
        return check(args.file)
    model = UNet(args.model)
    _, _, _, _, _, _, cin, size = CONFIGS[args.model]
    x = torch.zeros(1, cin, size, size)
    print(json.dumps({"model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
                      "forward_flops_per_image": count_flops(model, x, torch.zeros(1, dtype=torch.long))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
