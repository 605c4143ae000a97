"""Kernel benchmarks: RS-MMA and fused GroupNorm(+FiLM+SiLU) vs the baselines a user would pick.

    python -m benchmarks.kernels [--device cpu|cuda] [--dtype float32|bfloat16] [--batch N]
                                 [--repeat N] [--only attention|norm] [--out results.json]

RS-MMA at the paper-64 preset's layer shapes, GroupNorm at the model's norm shapes; forward and
forward+backward; time (median of interleaved runs), useful GFLOP/s (attention) or GB/s (norm),
peak extra memory, and each baseline's time over ours (`speedup`), all measured in one run.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import mmattn
from benchmarks.common import (cpu_peak_extra_bytes, cuda_peak_extra_bytes, device_name,
                               format_table, peak_rss_growth, time_round_robin, write_json)
from mmattn.reference import group_norm_act_reference, rs_attention_dense, rs_attention_gather


@dataclass(frozen=True)
class AttentionCase:
    name: str
    heads: int
    frames: int
    tokens_per_frame: int
    audio_len: int
    window: int
    head_dim: int = 64

    def useful_flops(self, batch: int) -> float:
        """Forward FLOPs of the products with the keys each query really sees (2 GEMMs)."""
        video_keys = self.window * self.audio_len / self.frames      # per video query, on average
        audio_keys = self.window * self.tokens_per_frame             # per audio query
        keys = self.frames * self.tokens_per_frame * video_keys + self.audio_len * audio_keys
        return 4.0 * batch * self.heads * self.head_dim * keys


# The RS-MMA layers of paper-64 (video 16x64x64 -> tokens per frame at downsample 2, 4, 8).
ATTENTION_CASES = [
    AttentionCase("ds2", heads=4, frames=16, tokens_per_frame=32 * 32, audio_len=6400, window=1),
    AttentionCase("ds4", heads=6, frames=16, tokens_per_frame=16 * 16, audio_len=1600, window=4),
    AttentionCase("ds8", heads=8, frames=16, tokens_per_frame=8 * 8, audio_len=400, window=8),
    AttentionCase("middle", heads=8, frames=16, tokens_per_frame=8 * 8, audio_len=400, window=16),
]
SHIFT = 3  # any fixed shift: cost does not depend on it


@dataclass(frozen=True)
class NormCase:
    name: str
    shape: tuple[int, ...]  # without the batch dim
    channel_dim: int
    groups: int = 32
    frames_last: bool = False  # video in memory order (B, F, H, W, C), as the U-Net holds it


NORM_CASES = [
    NormCase("audio-128x25600", (128, 25600), 1),          # [B, C, L]
    NormCase("video-16x128x64x64", (16, 128, 64, 64), 2),  # [B, F, C, H, W]
    NormCase("video-16x256x32x32", (16, 256, 32, 32), 2),
    NormCase("video-fl-16x128x64x64", (16, 128, 64, 64), 2, frames_last=True),
    NormCase("video-fl-16x256x32x32", (16, 256, 32, 32), 2, frames_last=True),
]


# ------------------------------------------------------------------------------- attention

def flex_rs_attention(case: AttentionCase, batch: int, device: torch.device):
    """FlexAttention (compiled) with cached BlockMasks expressing the same windows."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    f, p, l, w = case.frames, case.tokens_per_frame, case.audio_len, case.window
    n = f * p

    def segment(idx, total):  # balanced segments floor(j * total / F)
        return ((idx + 1) * f - 1) // total

    def video_to_audio(b, h, q, k):
        return (segment(k, l) - segment(q, n) - SHIFT) % f < w

    def audio_to_video(b, h, q, k):
        return (segment(k, n) - segment(q, l) - SHIFT) % f < w

    mask_va = create_block_mask(video_to_audio, None, None, n, l, device=device)
    mask_av = create_block_mask(audio_to_video, None, None, l, n, device=device)
    # static shapes: the two directions' shapes must not turn each other into a dynamic-shape kernel
    attend = torch.compile(flex_attention, fullgraph=True, dynamic=False)

    def run(qv, kv, vv, qa, ka, va):
        return attend(qv, ka, va, block_mask=mask_va), attend(qa, kv, vv, block_mask=mask_av)
    return run


def attention_impls(case: AttentionCase, batch: int, device: torch.device) -> dict:
    kw = dict(frames=case.frames, window=case.window, shift=SHIFT)
    impls = {
        "mmattn": lambda *t: mmattn.rs_attention(*t, **kw),
        "gather": lambda *t: rs_attention_gather(*t, **kw),
        "dense": lambda *t: rs_attention_dense(*t, **kw),
    }
    if device.type == "cuda":
        impls["flex"] = flex_rs_attention(case, batch, device)
    return impls


def attention_inputs(case: AttentionCase, batch: int, dtype, device, requires_grad: bool):
    n = case.frames * case.tokens_per_frame
    shapes = [(batch, case.heads, n, case.head_dim)] * 3 + [(batch, case.heads, case.audio_len, case.head_dim)] * 3
    return [torch.randn(s, dtype=dtype, device=device, requires_grad=requires_grad) for s in shapes]


def attention_call(impl, inputs, mode: str):
    """A zero-argument callable running one forward or forward+backward."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                impl(*inputs)
        return run
    grads = None

    def run_fb():
        nonlocal grads
        outs = impl(*inputs)
        if grads is None:
            grads = [torch.randn_like(o) for o in outs]
        torch.autograd.backward(outs, grads)
        for t in inputs:
            t.grad = None
    return run_fb


# ------------------------------------------------------------------------------- norm

def norm_impls(case: NormCase, device: torch.device) -> dict:
    g, cd = case.groups, case.channel_dim
    impls = {
        "mmattn": lambda x, w, b, s, sh: mmattn.group_norm_act(x, g, w, b, scale=s, shift=sh, channel_dim=cd),
        "eager": lambda x, w, b, s, sh: group_norm_act_reference(x, g, w, b, scale=s, shift=sh, channel_dim=cd),
    }
    if device.type == "cuda":
        impls["compile"] = torch.compile(impls["eager"], dynamic=False)
    return impls


def norm_inputs(case: NormCase, batch: int, dtype, device, requires_grad: bool):
    c = case.shape[case.channel_dim - 1]
    if case.frames_last:
        f, c, h, w = case.shape
        x = torch.randn((batch, f, h, w, c), dtype=dtype, device=device).permute(0, 1, 4, 2, 3)
    else:
        x = torch.randn((batch, *case.shape), dtype=dtype, device=device)
    params = [torch.randn(c, device=device), torch.randn(c, device=device),
              torch.randn(batch, c, device=device), torch.randn(batch, c, device=device)]
    if dtype != torch.bfloat16:
        params = [p.to(dtype) for p in params]
    return [t.requires_grad_(requires_grad) for t in (x, *params)]


def norm_call(impl, inputs, mode: str):
    return attention_call(lambda *t: (impl(*t),), inputs, mode)


# ------------------------------------------------------------------------------- driver

def _probe(kind: str, case_name: str, impl: str, mode: str, batch: int, dtype: str) -> None:
    """Child process of cpu_peak_extra_bytes: prints the peak RSS growth of one call."""
    device, dt = torch.device("cpu"), getattr(torch, dtype)
    if kind == "attention":
        case = next(c for c in ATTENTION_CASES if c.name == case_name)
        inputs = attention_inputs(case, batch, dt, device, mode == "fwdbwd")
        fn = attention_call(attention_impls(case, batch, device)[impl], inputs, mode)
    else:
        case = next(c for c in NORM_CASES if c.name == case_name)
        inputs = norm_inputs(case, batch, dt, device, mode == "fwdbwd")
        fn = norm_call(norm_impls(case, device)[impl], inputs, mode)
    fn()  # one-time initialisation (thread pools, BLAS buffers) stays out of the figure
    print(peak_rss_growth(fn))


def run_case(kind, case, impls, make_inputs, make_call, args, device, dtype) -> list[dict]:
    rows = []
    for mode in ("fwd", "fwdbwd"):
        inputs = make_inputs(case, args.batch, dtype, device, mode == "fwdbwd")
        calls = {name: make_call(impl, inputs, mode) for name, impl in impls.items()}
        times = time_round_robin(calls, device, repeat=args.repeat)
        for name, seconds in times.items():
            if device.type == "cuda":
                peak = cuda_peak_extra_bytes(calls[name], device)
            else:
                peak = cpu_peak_extra_bytes("benchmarks.kernels", kind, case.name, name, mode,
                                            str(args.batch), args.dtype)
            row = dict(kind=kind, case=case.name, mode=mode, impl=name, ms=seconds * 1e3,
                       speedup=seconds / times["mmattn"], peak_mb=peak / 2**20)
            if kind == "attention":
                flops = case.useful_flops(args.batch) * (1 if mode == "fwd" else 3.5)
                row["tflops"] = flops / seconds / 1e12
            else:
                nbytes = inputs[0].numel() * inputs[0].element_size() * (2 if mode == "fwd" else 5)
                row["gbps"] = nbytes / seconds / 1e9
            rows.append(row)
        print(format_table([r for r in rows if r["mode"] == mode], COLUMNS), flush=True)
    return rows


COLUMNS = [("case", "case", "s"), ("mode", "mode", "s"), ("impl", "impl", "s"), ("ms", "ms", ".2f"),
           ("speedup", "their time / ours", ".2f"), ("tflops", "useful TFLOP/s", ".3f"),
           ("gbps", "GB/s", ".1f"), ("peak_mb", "peak extra MiB", ".0f")]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch", type=int, default=None, help="default: 4 on cuda, 2 on cpu")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per impl (default 20 cuda, 3 cpu)")
    parser.add_argument("--only", choices=["attention", "norm"], default=None)
    parser.add_argument("--cases", default=None, help="comma-separated case names")
    parser.add_argument("--skip-impl", default="", help="comma-separated baselines to skip (e.g. dense)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/kernels-<device>.json)")
    parser.add_argument("--probe", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        kind, case, impl, mode, batch, dtype = args.probe
        _probe(kind, case, impl, mode, int(batch), dtype)
        return {}
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    args.batch = args.batch or (4 if cuda else 2)
    args.repeat = args.repeat or (20 if cuda else 3)
    dtype = getattr(torch, args.dtype)
    wanted = set(args.cases.split(",")) if args.cases else None
    skip = set(filter(None, args.skip_impl.split(",")))
    print(f"device: {device_name(device)}, dtype {args.dtype}, batch {args.batch}, torch {torch.__version__}")

    rows: list[dict] = []
    if args.only in (None, "attention"):
        for case in ATTENTION_CASES:
            if wanted is None or case.name in wanted:
                impls = {k: v for k, v in attention_impls(case, args.batch, device).items() if k not in skip}
                rows += run_case("attention", case, impls, attention_inputs, attention_call, args, device, dtype)
    if args.only in (None, "norm"):
        for case in NORM_CASES:
            if wanted is None or case.name in wanted:
                impls = {k: v for k, v in norm_impls(case, device).items() if k not in skip}
                rows += run_case("norm", case, impls, norm_inputs, norm_call, args, device, dtype)

    payload = dict(device=device_name(device), torch=torch.__version__, dtype=args.dtype, batch=args.batch,
                   attention_cases=[asdict(c) for c in ATTENTION_CASES], rows=rows)
    out = args.out or Path("benchmarks/results") / f"kernels-{device.type}.json"
    write_json(out, payload)
    print("\n" + format_table(rows, COLUMNS))
    print(f"\nwrote {out}")
    return payload


if __name__ == "__main__":
    main()
