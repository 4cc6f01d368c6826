"""Does a fused path for SAM's decomposed relative-position bias pay? One attention call, forward + backward, ViT-B.

    python benchmarks/attention.py --output attention.json        # on CUDA, bf16: well under a minute
    python benchmarks/attention.py --device cpu --side 16 --window 6 --batch 1 --flex skip   # smoke run

score(q, k) = scale q.k + rel_h[q, row(k)] + rel_w[q, col(k)], with rel_h (N, heads, HW, H) and rel_w
(N, heads, HW, W) computed from q. Ways timed, each with gradients to q, k, v, rel_h and rel_w:
- bias: transformers' way, the (N, heads, HW, HW) bias materialised and given to scaled_dot_product_attention;
- folded: `medsa_peft.tuner.adapters.rel_pos_attention`'s way, q' = [scale q, rel_h, rel_w],
  k' = [k, onehot(row), onehot(col)], no bias; with v padded to the width of q' (flash kernels need equal
  widths; what the library does), or v left 64 wide; each under the default kernel choice and each kernel forced;
- flex: torch.compile'd flex_attention with the bias added in a score_mod (learnable captured tensors).
Cases: a global layer (64 x 64 tokens, batch 4), a windowed one (14 x 14 windows, 4 x 25 of them), and SD-Trans's
depth attention (8 slices at each of the 64 x 64 tokens of one volume; no bias) under each kernel and as
`medsa_peft.tuner.adapters.short_sequence_attention` compiled, what a compiled Med-SA layer runs ("short-compiled").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medsa_peft.tuner.adapters import fold_bias_into_query_key, short_sequence_attention

HEADS, HEAD_DIM = 12, 64
KERNELS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)


def inputs(sequences: int, tokens: int, bias_width: int, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    """q, k, v of (sequences, heads, tokens, 64), then rel_h, rel_w of (sequences, heads, tokens, bias_width)."""
    generator = torch.Generator(device=device).manual_seed(0)
    shapes = [(sequences, HEADS, tokens, HEAD_DIM)] * 3 + [(sequences, HEADS, tokens, bias_width)] * 2 * (
        bias_width > 0
    )
    return [
        (torch.randn(shape, device=device, generator=generator) * 0.5).to(dtype).requires_grad_() for shape in shapes
    ]


def plain(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def with_bias(q, k, v, rel_h, rel_w):
    n, heads, tokens, _ = q.shape
    bias = (rel_h[..., :, None] + rel_w[..., None, :]).reshape(n, heads, tokens, tokens)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def folded(pad_value: bool):
    def attend(q, k, v, rel_h, rel_w):
        query, key = fold_bias_into_query_key(q, k, rel_h, rel_w, q.shape[-1] ** -0.5)
        value = F.pad(v, (0, query.shape[-1] - v.shape[-1])) if pad_value else v
        return F.scaled_dot_product_attention(query, key, value, scale=1.0)[..., : v.shape[-1]]

    return attend


def flex():
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention)

    def attend(q, k, v, rel_h, rel_w):
        side = rel_h.shape[-1]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + rel_h[b, h, q_idx, kv_idx // side] + rel_w[b, h, q_idx, kv_idx % side]

        return compiled(q, k, v, score_mod=score_mod)

    return attend


def time_fwd_bwd(attend, tensors, repeats: int) -> dict:
    """Median ms of forward + backward, and on CUDA the peak memory above the inputs, in MiB."""
    cuda = tensors[0].is_cuda
    grad = torch.randn_like(tensors[0])

    def run():
        torch.autograd.grad(attend(*tensors), tensors, grad)
        if cuda:
            torch.cuda.synchronize()

    run()
    if cuda:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(1000 * (time.perf_counter() - started))
    result = {"ms": round(sorted(times)[len(times) // 2], 3)}
    if cuda:
        result["peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20)
    return result


def relative_error(attend, reference, tensors) -> float:
    """max |attend - reference| / max |reference| on the forward output, the reference in float32."""
    with torch.no_grad():
        expected = reference(*[t.float() for t in tensors])
        got = attend(*tensors).float()
    return ((got - expected).abs().max() / expected.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=4, help="images (global and windowed cases)")
    parser.add_argument("--side", type=int, default=64, help="tokens per side of an image")
    parser.add_argument("--window", type=int, default=14)
    parser.add_argument("--depth", type=int, default=8, help="slices per volume in the depth case")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--flex", choices=("also", "skip", "only"), default="also",
                        help="flex_attention compiles for a while: time it too, not at all, or alone")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    windows = args.batch * (-(-args.side // args.window)) ** 2
    biased_ways = {} if args.flex == "only" else {
        "bias": with_bias, "folded-padded-v": folded(True), "folded-v64": folded(False)
    }
    if args.flex != "skip":
        biased_ways["flex"] = flex()
    cases = [
        ("global", inputs(args.batch, args.side**2, args.side, args.device, dtype), biased_ways, with_bias),
        ("window", inputs(windows, args.window**2, args.window, args.device, dtype), biased_ways, with_bias),
    ]
    if args.flex != "only":
        depth_ways = {"plain": plain, "short-compiled": torch.compile(short_sequence_attention)}
        cases.append(("depth", inputs(args.side**2, args.depth, 0, args.device, dtype), depth_ways, plain))
    rows = []
    for case, tensors, ways, reference in cases:
        for name, attend in ways.items():
            for kernel in (None,) + (KERNELS if name not in ("flex", "short-compiled") else ()):
                started = time.perf_counter()
                try:
                    if kernel is None:
                        result = time_fwd_bwd(attend, tensors, args.repeats)
                        result["error_vs_fp32"] = relative_error(attend, reference, tensors)
                    else:
                        with sdpa_kernel(kernel):
                            result = time_fwd_bwd(attend, tensors, args.repeats)
                except Exception as error:  # noqa: BLE001  (a kernel that refuses these shapes is a result too)
                    result = {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}"}
                way = name if kernel is None else f"{name}[{kernel.name}]"
                row = {"case": case, "way": way, **result, "wall_s": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.device == "cuda":
                    torch.cuda.empty_cache()
    if args.output:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        args.output.write_text(json.dumps({"device": device, "torch": torch.__version__, "args": vars(args) | {
            "output": str(args.output)}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
