"""Train and infer side by side on one SamModel config: Med-SA 2D and 3D, PEFT LoRA, full fine-tuning, and a naive
eager Med-SA (materialised fp32 attention, `naive_medsa.py`) that stands in for the authors' code.

    python benchmarks/benchmark.py --preset cpu                  # small SAM, fp32: ratios in a few minutes on 2 cores
    python benchmarks/benchmark.py --preset gpu --compile        # ViT-B at 1024 px, bf16 autocast, batch 4, D = 8
    python benchmarks/benchmark.py --preset gpu --variants train:medsa-fused+compile,train:medsa-fused+cudagraphs
    python benchmarks/benchmark.py --preset gpu --variants train:medsa-fused-3d --depth 32 --batch 32 \\
        --gradient_checkpointing                                 # one 32-slice volume with activation checkpointing
    python benchmarks/benchmark.py --preset cpu-sam2             # SAM 2 (Hiera-T at 256 px): Med-SA beside LoRA

A training step is forward + backward + AdamW step on a box prompt per image and a BCE loss on the low-resolution
mask; an inference step is the whole forward (image encoder, prompt encoder, mask decoder) without gradients. Every
Med-SA model uses `MedSAConfig.official()`, the authors' configuration: encoder adapters (space, MLP, depth for 3D),
the whole mask decoder trained. LoRA: r=4 on the image encoder's qkv, the mask decoder trained (modules_to_save).
3D steps take `max(1, batch // depth)` volumes of `depth` slices. images/s: images of one step over the median
time of the timed steps (each step synchronised), so a busy shared machine disturbs it less; slices count as images.
host %: the median time the step takes to return (the host issuing its work) over the median step time; near 100
the step is bound by the host (Python, kernel launches), not by the device. (A step that waited for the device
inside, e.g. reading the loss, would show 100 too; these steps never do.)

Compiled variants (`medsa_peft.tuner.fast_paths.compile_sam_layers`): "+compile" compiles every image-encoder layer and
the prompt encoder and mask decoder whole; "+compile-blocks" the image-encoder layers and the decoder's two-way
blocks only (the decoder's other modules eager); "+cudagraphs" is "+compile" with `mode="reduce-overhead"`, which
replays each graph as a CUDA graph (on a CPU it is "+compile").

Peak memory: on CUDA `torch.cuda.max_memory_allocated` from the model's creation to the end of the timed steps
(weights, optimizer state and activations). On the CPU every variant runs in a fresh forked process and the peak is
that process's peak resident set (`ru_maxrss`) minus its resident set before the model was built.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from functools import cache, partial
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.profiler import ProfilerActivity, profile
from transformers import Sam2Config, Sam2Model, SamConfig, SamModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from naive_medsa import NaiveMedSA

import medsa_peft  # noqa: F401  (registers MEDSA)
from medsa_peft import MedSAConfig
from medsa_peft.data.preprocess import SamFrame
from medsa_peft.tuner.fast_paths import compile_sam_layers, use_fused_attention
from medsa_peft.tiny_sam import randomize_weights, tiny_sam_config


@dataclass(frozen=True)
class Preset:
    config: str  # "vit-b", "small" (SamModel) or "sam2-small" (Sam2Model)
    device: str
    batch: int
    depth: int
    steps: int
    warmup: int
    bf16: bool
    threads: int | None  # CPU threads; one thread keeps ratios steady on a shared machine


PRESETS = {
    # 32 x 32 tokens in 5 x 5 windows of 7 (padded to 35, as ViT-B pads 64 to 70), layers 1 and 3 global
    "cpu": Preset(config="small", device="cpu", batch=2, depth=4, steps=5, warmup=1, bf16=False,
                  threads=1),
    "gpu": Preset(config="vit-b", device="cuda", batch=4, depth=8, steps=10, warmup=2, bf16=True,
                  threads=None),
    # SAM 2.1 Hiera-T's encoder (stages of 1, 2, 7, 2 blocks, 96 to 768 wide) at 256 px: 64 x 64 tokens first
    "cpu-sam2": Preset(config="sam2-small", device="cpu", batch=2, depth=4, steps=5, warmup=1, bf16=False,
                       threads=1),
}
# what runs on SAM 2: no naive reference (written for SAM's ViT), no fused attention (Hiera has no rel-pos bias)
SAM2_METHODS = ("medsa", "lora", "full", "sam")


def sam_config(name: str) -> SamConfig | Sam2Config:
    if name == "vit-b":
        return SamConfig()
    if name == "sam2-small":
        # Sam2Config's defaults are SAM 2.1 Hiera-T's; only the image size changes
        backbone = {"model_type": "sam2_hiera_det_model", "image_size": [256, 256]}
        vision = {"backbone_config": backbone, "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]]}
        return Sam2Config(vision_config=vision, prompt_encoder_config={"image_size": 256})
    return tiny_sam_config(
        image_size=512, patch_size=16, hidden_size=96, num_layers=4, window_size=7, global_attn_indexes=(1, 3),
        prompt_hidden_size=64,
    )


# how a compiled variant calls compile_sam_layers, by the suffix of its name
COMPILE_MODES = {
    "compile": {},
    "compile-blocks": {"whole_decoder": False},
    "cudagraphs": {"mode": "reduce-overhead"},
}


@dataclass(frozen=True)
class Variant:
    task: str  # "train" or "infer"
    method: str  # "reference", "medsa", "medsa-fused", "lora", "full", "sam"
    volumetric: bool = False
    compiled: str = ""  # "" (eager) or a key of COMPILE_MODES

    @property
    def name(self) -> str:
        suffix = ("-3d" if self.volumetric else "") + (f"+{self.compiled}" if self.compiled else "")
        return f"{self.task}:{self.method}{suffix}"


TRAINING = [
    Variant("train", method, volumetric)
    for volumetric in (False, True)
    for method in ("reference", "medsa", "medsa-fused") + (() if volumetric else ("lora", "full"))
]
INFERENCE = [Variant("infer", method) for method in ("reference", "sam", "lora", "medsa", "medsa-fused")]
ALL_VARIANTS = {
    variant.name: variant
    for base in TRAINING + INFERENCE
    for variant in [base] + [replace(base, compiled=mode) for mode in COMPILE_MODES]
    if not (variant.compiled and variant.method == "reference")
}


def default_variants(compiled: bool) -> list[Variant]:
    eager = TRAINING + INFERENCE
    return eager + ([replace(v, compiled="compile") for v in eager if v.method != "reference"] if compiled else [])


@cache
def base_sam(config_name: str) -> SamModel | Sam2Model:
    """One SAM with real random weights (SamModel(config) alone is near zero), copied for every variant."""
    torch.manual_seed(0)
    config = sam_config(config_name)
    model_class = Sam2Model if isinstance(config, Sam2Config) else SamModel
    return randomize_weights(model_class(config), std=0.02)


def image_size(preset: Preset) -> int:
    return SamFrame.from_config(sam_config(preset.config)).image_size


def adapt(sam: SamModel, method: str, volumetric: bool = False) -> torch.nn.Module:
    """`sam` with a method's adapters: Med-SA in the authors' configuration (the reference's weights too), LoRA
    r=4 on the image encoder's qkv with the mask decoder trained, or `sam` itself (full fine-tuning, plain SAM)."""
    sam.requires_grad_(method == "full")
    if method in ("reference", "medsa", "medsa-fused"):
        model = get_peft_model(sam, MedSAConfig.official(depth_adapter=volumetric))
        return use_fused_attention(model) if method == "medsa-fused" else model
    if method == "lora":
        qkv = r".*vision_encoder\.(layers|backbone\.blocks)\.\d+\.attn\.qkv"  # SAM's ViT layers, SAM 2's Hiera blocks
        lora = LoraConfig(r=4, lora_alpha=8, target_modules=qkv, modules_to_save=["mask_decoder"])
        return get_peft_model(sam, lora)
    return sam


def build_model(variant: Variant, preset: Preset, gradient_checkpointing: bool) -> tuple[torch.nn.Module, float]:
    """The model a variant runs, on the preset's device, and its trainable share of parameters in %."""
    sam = copy.deepcopy(base_sam(preset.config)).to(preset.device)
    model = adapt(sam, variant.method, variant.volumetric)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    share = 100.0 * trainable / sum(p.numel() for p in model.parameters())
    if gradient_checkpointing and variant.task == "train" and variant.method != "reference":
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if variant.method == "reference":
        model = NaiveMedSA(model)
    if variant.compiled:
        compile_sam_layers(model, dynamic=False, **COMPILE_MODES[variant.compiled])
    model.train(variant.task == "train")
    return model, share


def make_inputs(images: int, image_size: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    corner = torch.rand(images, 1, 2, generator=generator) * image_size / 2
    boxes = torch.cat([corner, corner + image_size / 3], dim=-1)
    pixels = torch.randn(images, 3, image_size, image_size, generator=generator)
    low_res = image_size // 4  # SAM's masks come at 4x the image-embedding size
    target = (torch.rand(images, 1, 1, low_res, low_res, generator=generator) > 0.5).float()
    return {"pixel_values": pixels.to(device), "input_boxes": boxes.to(device), "target": target.to(device)}


def images_per_step(variant: Variant, batch: int, depth: int) -> tuple[int, int | None]:
    """(images, depth argument) of one step."""
    if variant.volumetric:
        return max(1, batch // depth) * depth, depth
    return batch, None


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def cudagraph_skips() -> int:
    """Graphs so far that Inductor compiled for CUDA graphs but runs without them (the log says why)."""
    return torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(variant: Variant, preset: Preset, args: argparse.Namespace) -> dict:
    """Build, warm up and time one variant; returns its row of the results."""
    device = preset.device
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = current_rss_bytes()
    skips_before = cudagraph_skips()
    model, trainable_share = build_model(variant, preset, args.gradient_checkpointing)
    images, depth = images_per_step(variant, args.batch, args.depth)
    inputs = make_inputs(images, image_size(preset), device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    depth_argument = {} if depth is None else {"depth": depth}
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=preset.bf16)

    def forward():
        with autocast:
            return model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"],
                         multimask_output=False, **depth_argument)

    if variant.task == "train":
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=device == "cuda")

        def step():
            if variant.compiled == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()  # the graphs' outputs of the last step may be reused
            optimizer.zero_grad(set_to_none=True)
            loss = F.binary_cross_entropy_with_logits(forward().pred_masks.float(), inputs["target"])
            loss.backward()
            optimizer.step()
    else:

        def step():
            if variant.compiled == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()
            with torch.inference_mode():
                forward()

    started = time.perf_counter()
    for _ in range(args.warmup + (2 if variant.compiled else 0)):
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - started
    step_seconds, issue_seconds = [], []
    for _ in range(args.steps):
        started = time.perf_counter()
        step()
        issue_seconds.append(time.perf_counter() - started)
        synchronize(device)
        step_seconds.append(time.perf_counter() - started)
    median = sorted(step_seconds)[len(step_seconds) // 2]
    median_issue = sorted(issue_seconds)[len(issue_seconds) // 2]
    if device == "cuda":
        peak, peak_kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:
        peak, peak_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before, "rss_peak_growth"
    row = {
        "variant": variant.name, **asdict(variant), "images_per_step": images, "steps": args.steps,
        "images_per_s": images / median, "step_ms": [round(1000 * t, 2) for t in step_seconds],
        "issue_ms": [round(1000 * t, 2) for t in issue_seconds], "host_percent": 100 * median_issue / median,
        "warmup_s": warmup_s, "peak_bytes": peak, "peak_kind": peak_kind, "trainable_percent": trainable_share,
        "trainable_parameters": trainable,
    }
    if variant.compiled == "cudagraphs":  # graphs that Inductor could not replay as CUDA graphs run without
        row["cudagraph_skips"] = cudagraph_skips() - skips_before
    if args.profile:
        row["profile"] = profile_step(step, device)
    return row


def profile_step(step, device: str) -> str:
    """The operators and kernels of one more step that took the most time, as torch.profiler's table."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        step()
        synchronize(device)
    sort_by = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    return profiler.key_averages().table(sort_by=sort_by, row_limit=25, max_name_column_width=60)


def run_isolated(function, fork: bool) -> dict:
    """function() in this process, or in a forked child (fresh peak-RSS accounting), errors as a row."""
    if not fork:
        return _as_row(function)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into the caller's code, whatever happens
        status = 1
        try:
            os.close(read_end)
            with os.fdopen(write_end, "w") as pipe:
                json.dump(_as_row(function), pipe)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0:
        return {"error": f"child process ended with wait status {status}"}
    return json.loads(text)


def _as_row(function) -> dict:
    try:
        return function()
    except torch.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as error:  # noqa: BLE001  (a broken variant is reported in its row; the others still run)
        return {"error": f"{type(error).__name__}: {error}"[:500]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def check_agreement(preset: Preset, depth: int) -> dict:
    """Relative difference of the mask logits of Med-SA (SAM's attention, then the fused attention) from the naive
    reference's, on the same weights: one volume of `depth` slices, official (non-zero) adapter init."""
    model, _ = build_model(Variant("infer", "medsa", volumetric=True), preset, gradient_checkpointing=False)
    model.eval()
    inputs = make_inputs(depth, image_size(preset), preset.device)
    call = {"pixel_values": inputs["pixel_values"], "input_boxes": inputs["input_boxes"], "depth": depth,
            "multimask_output": False}
    with torch.inference_mode(), torch.autocast(preset.device, dtype=torch.bfloat16, enabled=preset.bf16):
        reference = NaiveMedSA(model)(**call).pred_masks.float()
        sam_attention = model(**call).pred_masks.float()
        fused = use_fused_attention(model)(**call).pred_masks.float()

    def relative(x: torch.Tensor) -> float:
        return ((x - reference).norm() / reference.norm()).item()

    return {"depth": depth, "medsa_vs_reference": relative(sam_attention), "fused_vs_reference": relative(fused)}


def ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:6.2f}" if value and base else "     -"


def report(rows: list[dict]) -> str:
    """A table with images/s, peak memory, trainable share and the ratios to the reference and to LoRA / SAM."""
    ok = [row for row in rows if "error" not in row]
    by_name = {row["variant"]: row for row in ok}

    def baseline(row: dict, method: str) -> dict | None:
        """The row of `method` compiled the same way, else compiled plainly, else eager."""
        volumetric = row["volumetric"] and method == "reference"
        for compiled in dict.fromkeys([row["compiled"], "compile" if row["compiled"] else "", ""]):
            match = by_name.get(Variant(row["task"], method, volumetric, compiled).name)
            if match:
                return match
        return None

    header = (f"{'variant':34} {'img/s':>8} {'x ref':>6} {'x LoRA':>6} {'x SAM':>6} "
              f"{'peak MiB':>9} {'mem x LoRA':>10} {'train %':>8} {'host %':>7}")
    lines = [header, "-" * len(header)]
    for row in rows:
        if "error" in row:
            lines.append(f"{row['variant']:34} {row['error']}")
            continue
        reference = baseline(row, "reference")
        lora = baseline(row, "lora")
        sam = baseline(row, "sam") if row["task"] == "infer" else None
        ips = row["images_per_s"]
        lines.append(
            f"{row['variant']:34} {ips:8.2f} {ratio(ips, reference and reference['images_per_s'])} "
            f"{ratio(ips, lora and lora['images_per_s'])} {ratio(ips, sam and sam['images_per_s'])} "
            f"{row['peak_bytes'] / 2**20:9.0f} {ratio(row['peak_bytes'], lora and lora['peak_bytes']):>10} "
            f"{row['trainable_percent']:8.2f} {row['host_percent']:7.0f}"
        )
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as temporary:
        json.dump(payload, temporary, indent=1)
    os.replace(temporary.name, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--compile", action="store_true", help="add torch.compile'd variants (compile_sam_layers)")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="activation checkpointing in training")
    parser.add_argument("--batch", type=int, help="images per 2D step; 3D steps take batch // depth volumes")
    parser.add_argument("--depth", type=int, help="slices per volume in the 3D variants")
    parser.add_argument("--steps", type=int, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, help="untimed steps first (compiled variants: 2 more)")
    parser.add_argument("--variants", help=f"comma-separated subset of: {', '.join(ALL_VARIANTS)}")
    parser.add_argument("--no_check", action="store_true", help="skip the agreement check with the reference")
    parser.add_argument("--profile", action="store_true",
                        help="add torch.profiler's table of one more step; one variant only, as the profiler "
                             "leaves CUPTI attached and slows what runs after it (pytorch/pytorch#144455)")
    parser.add_argument("--time_budget", type=float, help="seconds; variants that would start later are skipped")
    parser.add_argument("--output", type=Path, help="write the rows as JSON here, after every variant")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for field in ("batch", "depth", "steps", "warmup"):
        if getattr(args, field) is None:
            setattr(args, field, getattr(preset, field))
    if args.variants:
        unknown = [name for name in args.variants.split(",") if name not in ALL_VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {', '.join(ALL_VARIANTS)}")
    if args.profile and (not args.variants or "," in args.variants):
        parser.error("--profile needs exactly one variant in --variants")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    if preset.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--preset gpu needs a CUDA device")
    variants = [ALL_VARIANTS[n] for n in args.variants.split(",")] if args.variants else default_variants(args.compile)
    sam2 = isinstance(sam_config(preset.config), Sam2Config)
    if sam2:
        variants = [variant for variant in variants if variant.method in SAM2_METHODS]
    fork = preset.device == "cpu"
    # every variant compiles the same layer classes again (train / inference, 2D / 3D, shapes): keep them all
    torch._dynamo.config.recompile_limit = 64
    if preset.threads:
        torch.set_num_threads(preset.threads)
    started = time.perf_counter()
    payload = {
        "command": " ".join([Path(sys.executable).name] + sys.argv),
        "device": torch.cuda.get_device_name() if preset.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "preset": asdict(preset), "args": {k: str(v) for k, v in vars(args).items()},
        "cpu_threads": torch.get_num_threads(), "rows": [],
    }
    print(f"{payload['device']}, torch {torch.__version__}, preset {args.preset}, batch {args.batch}, "
          f"depth {args.depth}, steps {args.steps}", flush=True)
    if not (args.no_check or sam2):
        payload["agreement"] = run_isolated(lambda: check_agreement(preset, min(args.depth, 4)), fork)
        print("agreement with the naive reference:", payload["agreement"], flush=True)
    for variant in variants:
        if args.time_budget is not None and time.perf_counter() - started > args.time_budget:
            row = {"variant": variant.name, "error": "skipped: time budget spent"}
        else:
            row = {"variant": variant.name, **run_isolated(partial(measure, variant, preset, args), fork)}
            if variant.compiled == "cudagraphs":
                torch._dynamo.reset()  # frees the CUDA graphs' memory pool, which later peaks would count
        payload["rows"].append(row)
        print(json.dumps({key: value for key, value in row.items() if key != "profile"}), flush=True)
        if "profile" in row:
            print(row["profile"], flush=True)
        if args.output:
            write_json(args.output, payload)
    table = report(payload["rows"])
    print(table)
    if args.output:
        payload["table"] = table
        write_json(args.output, payload)


if __name__ == "__main__":
    main()
