"""Data loading per CPU worker: samples/s of `SamTrainingSamples`, stage by stage, on realistic fake ISIC 2018 and
BTCV folders prepared through the real builders, beside transformers' SamImageProcessor on the same arrays.

    python benchmarks/data.py                    # writes the fake folders once (under --root), then measures
    python benchmarks/data.py --skip e2e         # without the end-to-end training row
    mkdir /tmp/e61d025 && git archive e61d025 | tar -x -C /tmp/e61d025
    python benchmarks/data.py --baseline /tmp/e61d025   # and the code before issue 13, in the same run

Every measurement runs in a fresh child process with one thread (as a DataLoader worker runs), so its peak RSS is
the worker's. Times are medians of --repeats passes. Fake data: ISIC 2018 Task 1 training folders with --per_size
JPEGs (quality 95) of each size of the mix 600x450, 1024x768, 2048x1536, 4288x2848, and BTCV in MONAI's layout with
three 512 x 512 x 88-96 int16 volumes stored LPS (two train); prepared by datasets_scripts' ISIC and BTCV builders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.environ.get("MEDSA_BENCHMARK_CODE", str(Path(__file__).resolve().parents[1])))

ISIC_SIZES = ((600, 450), (1024, 768), (2048, 1536), (4288, 2848))  # (width, height) of the ISIC 2018 mix
BTCV_DEPTHS = (92, 88, 96)  # slices of the fake volumes, 512 x 512 each
BTCV_SPACING = (0.76, 0.76, 3.0)
GPU_RATE = 60.0  # images/s the data must sustain for one H200 (issue 13)


# ----------------------------------------------------------------------------------------------------------
# Fake data sets in the official layouts


def dermoscopy_picture(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB uint8 dermoscopy-like picture (skin, vignette, a brown lesion with an irregular border, sensor noise)
    and its lesion mask (0 / 255)."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
    cols = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :] * (width / height)
    radius = np.sqrt(rows**2 + cols**2)
    angle = np.arctan2(rows, cols)
    edge = 0.55 * (1 + 0.12 * np.sin(5 * angle + rng.uniform(0, 6)) + 0.06 * np.sin(13 * angle + rng.uniform(0, 6)))
    lesion = radius < edge
    vignette = np.clip(1.15 - 0.35 * radius, 0.4, 1.0)
    picture = np.empty((height, width, 3), np.float32)
    for channel, (skin, brown) in enumerate(zip((225.0, 170.0, 150.0), (120.0, 75.0, 55.0))):
        texture = 12.0 * np.sin(40 * rows + 3 * channel) * np.cos(35 * cols)
        picture[..., channel] = np.where(lesion, brown + texture, skin) * vignette
    picture += rng.normal(0.0, 5.0, picture.shape).astype(np.float32)
    return np.clip(picture, 0, 255).astype(np.uint8), np.where(lesion, 255, 0).astype(np.uint8)


def write_isic(root: Path, per_size: int) -> Path:
    """ISIC 2018 Task 1 training folders: `per_size` JPEGs of each size of the mix, masks as PNG."""
    from PIL import Image

    from datasets_scripts.isic import ISIC_CONFIGS

    (_, image_folder, mask_folder), *_ = next(c for c in ISIC_CONFIGS if c.name == "isic2018").folders
    (root / image_folder).mkdir(parents=True, exist_ok=True)
    (root / mask_folder).mkdir(parents=True, exist_ok=True)
    number = 0
    for width, height in ISIC_SIZES:
        for _ in range(per_size):
            picture, mask = dermoscopy_picture(width, height, seed=number)
            name = f"ISIC_{number:07d}"
            Image.fromarray(picture).save(root / image_folder / f"{name}.jpg", quality=95)
            Image.fromarray(mask).save(root / mask_folder / f"{name}_segmentation.png")
            number += 1
    return root


def abdomen_ct(depth: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(512, 512, depth) int16 HU volume (air, a body of soft tissue, 13 organs as ellipsoids) and its labels."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[:512, :512].astype(np.float32)
    body = ((x - 256) / 220) ** 2 + ((y - 256) / 170) ** 2 <= 1
    volume = np.where(body, 40, -1000).astype(np.int16)[..., None].repeat(depth, axis=2)
    label = np.zeros((512, 512, depth), np.uint8)
    z = np.arange(depth, dtype=np.float32)
    for organ in range(1, 14):
        cx, cy = rng.uniform(150, 362), rng.uniform(170, 342)
        rx, ry = rng.uniform(12, 60), rng.uniform(12, 50)
        cz, rz = rng.uniform(0.2, 0.8) * depth, rng.uniform(0.08, 0.3) * depth
        inside = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2
        for index in np.flatnonzero(np.abs(z - cz) < rz):
            shrink = 1 - ((z[index] - cz) / rz) ** 2
            voxels = inside <= shrink
            label[..., index][voxels] = organ
            volume[..., index][voxels] = 20 + 8 * organ
    volume += rng.normal(0, 12, volume.shape).astype(np.int16)
    return volume, label


def write_btcv(root: Path) -> Path:
    """BTCV in the MONAI tutorial layout (imagesTr/, labelsTr/, dataset_0.json): the last volume validates."""
    import nibabel as nib

    affine = np.diag([-BTCV_SPACING[0], -BTCV_SPACING[1], BTCV_SPACING[2], 1.0])  # stored LPS, as CT often is
    entries = []
    for number, depth in enumerate(BTCV_DEPTHS, 1):
        volume, label = abdomen_ct(depth, seed=number)
        for folder, name, array in (("imagesTr", "img", volume), ("labelsTr", "label", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(array, affine), root / folder / f"{name}{number:04d}.nii.gz")
        entries.append({"image": f"imagesTr/img{number:04d}.nii.gz", "label": f"labelsTr/label{number:04d}.nii.gz"})
    (root / "dataset_0.json").write_text(json.dumps({"training": entries[:-1], "validation": entries[-1:]}))
    return root


def fake_folders(root: Path, per_size: int) -> dict[str, Path]:
    """The fake ISIC and BTCV folders under `root`, written on the first call."""
    folders = {"isic": root / "isic2018", "btcv": root / "btcv"}
    if not (folders["isic"] / ".complete").exists():
        write_isic(folders["isic"], per_size)
        (folders["isic"] / ".complete").write_text("")
    if not (folders["btcv"] / ".complete").exists():
        write_btcv(folders["btcv"])
        (folders["btcv"] / ".complete").write_text("")
    return folders


def prepared_split(name: str, folders: dict[str, Path], root: Path):
    """The train split of the fake data set `name` through its real builder, and the builder's config."""
    from datasets_scripts.btcv import BTCV
    from datasets_scripts.isic import ISIC

    builder_class, config_name = {"isic": (ISIC, "isic2018"), "btcv": (BTCV, "monai_json")}[name]
    builder = builder_class(config_name=config_name, data_dir=str(folders[name]), cache_dir=str(root / "cache"))
    builder.download_and_prepare()
    return builder.as_dataset(split="train"), builder.config


# ----------------------------------------------------------------------------------------------------------
# Jobs: each runs in a fresh process with one thread


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of `repeats` calls of function() and the last result."""
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), result


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_samples(split, config, options: dict, store_dir: str | None = None):
    import torch

    from medsa_peft.data import PromptSpec, SamFrame, SamTrainingSamples

    torch.manual_seed(0)
    frame = SamFrame(options["image_size"], options["mask_size"])
    store = {} if store_dir is None else {"store_dir": store_dir}  # a --baseline checkout may not know it
    return SamTrainingSamples(split, config.classes, config.modality, frame, PromptSpec.parse(options["prompt"]),
                              volume_depth=options["depth"], **store)


def job_prepare(options: dict) -> dict:
    """The one-off preparation (per example, into a fresh store), then the store the other jobs read."""
    import tempfile

    from medsa_peft.data import prepare_examples

    root = Path(options["root"])
    split, config = prepared_split(options["dataset"], fake_folders(root, options["per_size"]), root)
    seconds = []
    for index in range(len(split)):
        with tempfile.TemporaryDirectory(dir=root) as fresh:
            started = time.perf_counter()
            prepare_examples(split.select([index]), config.modality, options["image_size"], fresh)
            seconds.append(time.perf_counter() - started)
    make_samples(split, config, options)
    return {"seconds": seconds, "peak_rss": peak_rss_bytes()}


def job_worker(options: dict) -> dict:
    """What one DataLoader worker does: every sample of the split in turn, `repeats` passes; per-sample seconds.

    With options["cold"], a per-worker cache of decoded examples (`_cache`, the data layer before issue 13) is
    emptied before each sample: the miss that ~83% of shuffled samples of 24 BTCV volumes met with 4 cached."""
    root = Path(options["root"])
    split, config = prepared_split(options["dataset"], fake_folders(root, options["per_size"]), root)
    samples = make_samples(split, config, options)
    order = list(range(len(samples)))
    per_item = {index: [] for index in order}
    for _ in range(options["repeats"]):
        for index in order:
            if options.get("cold"):
                samples._cache.clear()
            started = time.perf_counter()
            samples[index]
            per_item[index].append(time.perf_counter() - started)
    medians = [statistics.median(per_item[index]) for index in order]
    return {"items": [list(item) for item in samples.items], "seconds": medians, "peak_rss": peak_rss_bytes()}


def job_isic_stages(options: dict) -> dict:
    """Per ISIC picture: the stages of one 2D sample, the framing the device does, and SamImageProcessor on the
    decoded picture."""
    import torch
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from medsa_peft.data import class_mask, collate_sam, decode_image, decoder_targets, sam_pixel_values
    from medsa_peft.data.samples import nearest_present_slices

    root = Path(options["root"])
    split, config = prepared_split("isic", fake_folders(root, options["per_size"]), root)
    samples = make_samples(split, config, options)
    frame, prompt, values = samples.frame, samples.prompt, config.classes["lesion"]
    processor = SamImageProcessorPil()
    repeats, rows = options["repeats"], []
    for index, example in enumerate(samples.examples):
        stages = {}
        stages["read stored picture"], image = timed(lambda: torch.from_numpy(example.image()).permute(2, 0, 1),
                                                     repeats)
        stages["read label (decompress), class mask"], masks = timed(lambda: class_mask(example.label(), values),
                                                                      repeats)
        rng = np.random.default_rng(0)
        sources = masks[nearest_present_slices(np.ones(1, bool))]
        stages["prompt"], _ = timed(lambda: prompt.sam_prompts(sources, frame.image_size, rng), repeats)
        stages["targets"], _ = timed(lambda: decoder_targets(masks, frame), repeats)
        stages["whole sample"], sample = timed(lambda: samples[index], repeats)
        batch = collate_sam([sample])
        device_s, _ = timed(lambda: sam_pixel_values(batch["images"], batch["image_sizes"], frame.image_size), repeats)
        pixels = decode_image(split[index])[0][:, :, 0]
        processor_s, _ = timed(lambda: processor(images=pixels, return_tensors="pt"), repeats)
        rows.append({"id": example.id, "size": [pixels.shape[1], pixels.shape[0]], "stages": stages,
                     "device framing": device_s, "sam_image_processor": processor_s,
                     "sample_bytes": sum(v.numel() * v.element_size() for v in sample.values())})
    return {"rows": rows, "peak_rss": peak_rss_bytes()}


def job_agreement(options: dict) -> dict:
    """Per ISIC picture, SAM pixel values three ways: this package (stored 8-bit frame, framed as on the device),
    the framing before issue 13 (MONAI's Gaussian anti-aliasing on the normalised float picture, then bilinear),
    SamImageProcessor. Differences in SAM's normalised units, over the picture (not the padding)."""
    import torch
    from monai.transforms import Resize, SpatialPad
    from monai.utils import convert_to_tensor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    from medsa_peft.data import collate_sam, decode_image, resized_shape, sam_pixel_values
    from medsa_peft.data.preprocess import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    root = Path(options["root"])
    split, config = prepared_split("isic", fake_folders(root, options["per_size"]), root)
    samples = make_samples(split, config, options)
    size = options["image_size"]
    processor = SamImageProcessorPil()
    rows = []
    for index in range(len(split)):
        batch = collate_sam([samples[index]])
        ours = sam_pixel_values(batch["images"], batch["image_sizes"], size)[0]
        picture = decode_image(split[index])[0][:, :, 0]
        height, width = resized_shape(picture.shape[:2], size)
        scaled = torch.from_numpy(picture).permute(2, 0, 1).float() / 255.0
        normalised = (scaled - torch.tensor(SAM_PIXEL_MEAN)[:, None, None]) / torch.tensor(SAM_PIXEL_STD)[:, None, None]
        before = SpatialPad((size, size), method="end")(Resize((height, width), mode="bilinear",
                                                                anti_aliasing=True)(normalised))
        before = convert_to_tensor(before, track_meta=False)
        processed = processor(images=picture, return_tensors="pt")["pixel_values"][0]
        differences = {}
        for name, a, b in (("ours-before", ours, before), ("ours-processor", ours, processed),
                           ("before-processor", before, processed)):
            difference = (a - b)[:, :height, :width].abs()
            differences[name] = [float(difference.mean()), float(difference.max())]
        rows.append({"size": [picture.shape[1], picture.shape[0]], "differences": differences})
    return {"rows": rows}


def job_btcv_stages(options: dict) -> dict:
    """Per BTCV volume (liver): the stages of one 3D sample, and the framing the device does."""
    from medsa_peft.data import class_mask, collate_sam, decoder_targets, sam_pixel_values
    from medsa_peft.data.samples import nearest_present_slices

    root = Path(options["root"])
    split, config = prepared_split("btcv", fake_folders(root, options["per_size"]), root)
    samples = make_samples(split, config, options)
    frame, prompt = samples.frame, samples.prompt
    repeats, depth, rows = options["repeats"], options["depth"], []
    values = config.classes["liver"]
    item = {index: samples.items.index((index, "liver")) for index in range(len(samples.examples))}
    for index, example in enumerate(samples.examples):
        stages = {}
        rng = np.random.default_rng(0)
        stages["chunk position (class counts)"], start = timed(lambda: samples._chunk_start(example, values, rng),
                                                               repeats)
        stop = start + depth
        stages["read + normalise 8 slices"], _ = timed(lambda: example.slices(start, stop, config.modality), repeats)
        stages["read label slab, class mask"], masks = timed(
            lambda: class_mask(np.asarray(example.label()[start:stop]), values), repeats)
        sources = masks[nearest_present_slices(example.counts(values)[start:stop] > 0)]
        stages["prompts"], _ = timed(lambda: prompt.sam_prompts(sources, frame.image_size, rng), repeats)
        stages["targets"], _ = timed(lambda: decoder_targets(masks, frame), repeats)
        stages["whole sample"], sample = timed(lambda: samples[item[index]], repeats)
        batch = collate_sam([sample])
        device_s, _ = timed(lambda: sam_pixel_values(batch["images"], batch["image_sizes"], frame.image_size), repeats)
        rows.append({"id": example.id, "shape": list(example.shape), "stages": stages, "device framing": device_s,
                     "sample_bytes": sum(v.numel() * v.element_size() for v in sample.values())})
    return {"rows": rows, "peak_rss": peak_rss_bytes()}


def job_handoff(options: dict) -> dict:
    """Collate and the worker hand-off: a batch through collate_sam in process, then through a 1-worker DataLoader
    (collate in the worker, shared memory to this process)."""
    import torch

    from medsa_peft.data import collate_sam

    root = Path(options["root"])
    split, config = prepared_split(options["dataset"], fake_folders(root, options["per_size"]), root)
    samples = make_samples(split, config, options)
    batch = [samples[index % len(samples)] for index in range(options["batch_size"])]
    collate_s, collated = timed(lambda: collate_sam(batch), options["repeats"])
    nbytes = sum(value.numel() * value.element_size() for value in collated.values() if torch.is_tensor(value))
    subset = torch.utils.data.Subset(samples, [index % len(samples) for index in range(options["loader_samples"])])
    in_process_s, _ = timed(lambda: [subset[i] and None for i in range(len(subset))], 1)  # each sample dropped
    loader = torch.utils.data.DataLoader(subset, batch_size=options["batch_size"], collate_fn=collate_sam,
                                         num_workers=1)
    started = time.perf_counter()
    for _ in loader:
        pass
    loader_s = time.perf_counter() - started
    return {"collate_s": collate_s, "batch_bytes": nbytes, "batch_size": options["batch_size"],
            "in_process_s": in_process_s, "loader_1_worker_s": loader_s, "samples": len(subset)}


def job_e2e(options: dict) -> dict:
    """Training images/s of a small SAM (benchmark.py's CPU preset, 512 px) on the fake ISIC pictures, through the
    training loop's own pieces (`train_loader`, `sam_inputs`, `LossMonitor`): with the loader, and the model step
    alone on one batch already loaded. With options["baseline"], the loop as it was before issue 13."""
    import torch
    from peft import get_peft_model
    from transformers import SamModel

    from medsa_peft import MedSAConfig
    from medsa_peft.data import SamFrame, collate_sam

    try:  # a --baseline checkout from before the tuner, training packages and medsa_peft.tiny_sam
        from medsa_peft.losses import DiceBCELoss
        from medsa_peft.performance import use_fused_attention
        from medsa_peft.testing import randomize_weights, tiny_sam_config
    except ImportError:
        from medsa_peft.tiny_sam import randomize_weights, tiny_sam_config
        from medsa_peft.training.losses import DiceBCELoss
        from medsa_peft.tuner.fast_paths import use_fused_attention

    root = Path(options["root"])
    split, config = prepared_split("isic", fake_folders(root, options["per_size"]), root)
    torch.manual_seed(0)
    small = tiny_sam_config(image_size=512, patch_size=16, hidden_size=96, num_layers=4, window_size=7,
                            global_attn_indexes=(1, 3), prompt_hidden_size=64)  # benchmark.py's "small"
    sam = randomize_weights(SamModel(small), std=0.02)
    frame = SamFrame.from_config(sam.config)
    samples = make_samples(split, config, {**options, "image_size": frame.image_size, "mask_size": frame.mask_size})
    model = use_fused_attention(get_peft_model(sam, MedSAConfig.official()))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss_fn = DiceBCELoss()
    batch_size, steps = options["batch_size"], options["steps"]
    if options.get("baseline"):  # the loop before issue 13: framed batches, no workers, the loss read every step
        workers = 0 if options["num_workers"] is None else options["num_workers"]
        loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=True, collate_fn=collate_sam,
                                             num_workers=workers)

        def step(batch, index):
            prompts = {name: batch[name] for name in ("input_boxes", "input_points", "input_labels") if name in batch}
            out = model(pixel_values=batch["pixel_values"], multimask_output=False, **prompts)
            loss = loss_fn(out.pred_masks[:, 0, 0], batch["labels"])
            if not bool(torch.isfinite(loss.detach())):
                raise FloatingPointError(f"non-finite loss at step {index}")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss.item()
    else:
        from medsa_peft.training.loop import LossMonitor, default_num_workers, sam_inputs, train_loader

        losses = LossMonitor(torch.device("cpu"))
        workers = default_num_workers() if options["num_workers"] is None else options["num_workers"]
        loader = train_loader(samples, batch_size, workers, pin_memory=False)

        def step(batch, index):
            out = model(**sam_inputs(batch, frame, None), multimask_output=False)
            loss = loss_fn(out.pred_masks[:, 0, 0], batch["labels"])
            losses.add(loss, index)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    fixed = collate_sam([samples[index] for index in range(batch_size)])
    step(fixed, 0)  # warm-up
    started = time.perf_counter()
    for index in range(steps):
        step(fixed, index)
    alone_s = time.perf_counter() - started
    batches = iter(loader)
    step(next(batches), 0)  # warm-up: the workers start
    done, started = 0, time.perf_counter()
    while done < steps:
        for batch in batches:
            step(batch, done)
            done += 1
            if done == steps:
                break
        batches = iter(loader)
    loader_s = time.perf_counter() - started
    return {"images": steps * batch_size, "step_alone_s": alone_s, "with_loader_s": loader_s,
            "num_workers": workers, "image_size": frame.image_size}


JOBS = {"prepare": job_prepare, "worker": job_worker, "isic-stages": job_isic_stages, "agreement": job_agreement,
        "btcv-stages": job_btcv_stages, "handoff": job_handoff, "e2e": job_e2e}


def run_job(name: str, options: dict, code: str | None = None) -> dict:
    """Run job `name` in a fresh Python process with one thread; its JSON result. `code`: a checkout whose
    medsa_peft and datasets_scripts the job imports instead of this one's (--baseline)."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1",
                   "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if code is not None:
        environment["MEDSA_BENCHMARK_CODE"] = code
    result = subprocess.run([sys.executable, __file__, "--job", name, "--job_options", json.dumps(options)],
                            env=environment, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"job {name} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------------------
# Report


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


def by_size(rows: list, per_size: int, value) -> list[float]:
    """The mean of value(row) over the pictures of each size of the mix."""
    return [statistics.mean(value(row) for row in rows[group * per_size:(group + 1) * per_size])
            for group in range(len(ISIC_SIZES))]


def summarise(results: dict, options: dict) -> str:
    lines = []
    per_size, repeats = options["per_size"], options["repeats"]
    seconds = results["isic-worker"]["seconds"]
    lines.append(f"ISIC-like 2D, one worker (samples/s, medians of {repeats}):")
    for group, (width, height) in enumerate(ISIC_SIZES):
        chunk = seconds[group * per_size:(group + 1) * per_size]
        lines.append(f"  {width}x{height}: {rate(len(chunk), sum(chunk)):.1f} img/s")
    mix = rate(len(seconds), sum(seconds))
    lines.append(f"  mix: {mix:.1f} img/s; workers for {GPU_RATE:.0f} img/s: {math.ceil(GPU_RATE / mix)};"
                 f" peak RSS {results['isic-worker']['peak_rss'] / 2**30:.2f} GiB")
    rows = results["isic-stages"]["rows"]
    lines.append("  ms per picture (" + " / ".join(f"{w}x{h}" for w, h in ISIC_SIZES) + "):")
    prepare = results["isic-prepare"]["seconds"]
    entries = [("prepare, once per example (decode, 8-bit resize, write)",
                by_size([{"s": s} for s in prepare], per_size, lambda r: r["s"]))]
    entries += [(stage, by_size(rows, per_size, lambda r, stage=stage: r["stages"][stage]))
                for stage in rows[0]["stages"]]
    entries += [("device framing (CPU here)", by_size(rows, per_size, lambda r: r["device framing"])),
                ("SamImageProcessor on the decoded picture",
                 by_size(rows, per_size, lambda r: r["sam_image_processor"]))]
    for name, values in entries:
        lines.append(f"    {name:58s} " + " / ".join(f"{1000 * v:7.1f}" for v in values))
    sample_mib = by_size(rows, per_size, lambda r: r["sample_bytes"] / 2**20)
    lines.append("    sample size, MiB " + " / ".join(f"{v:.2f}" for v in sample_mib))
    agreement = results["isic-agreement"]["rows"]
    for name in agreement[0]["differences"]:
        values = by_size(agreement, per_size, lambda r, name=name: r["differences"][name][0])
        maxima = by_size(agreement, per_size, lambda r, name=name: r["differences"][name][1])
        lines.append(f"  |{name}| mean / max, normalised units: "
                     + " ; ".join(f"{v:.4f} / {m:.3f}" for v, m in zip(values, maxima)))

    depth = options["depth"]
    worker = results["btcv-worker"]
    per_sample = statistics.median(worker["seconds"])
    lines.append(f"BTCV-like 3D, depth {depth}, one worker: {rate(depth, per_sample):.0f} slices/s"
                 f" ({1000 * per_sample:.1f} ms per sample, every sample alike); peak RSS"
                 f" {worker['peak_rss'] / 2**30:.2f} GiB")
    lines.append(f"  prepare, once per volume: {statistics.mean(results['btcv-prepare']['seconds']):.2f} s")
    rows = results["btcv-stages"]["rows"]
    lines.append("  ms per sample (mean over volumes):")
    for stage in rows[0]["stages"]:
        lines.append(f"    {stage:58s} {1000 * statistics.mean(r['stages'][stage] for r in rows):7.1f}")
    device_ms = 1000 * statistics.mean(r["device framing"] for r in rows)
    lines.append(f"    {'device framing (CPU here)':58s} {device_ms:7.1f}")
    lines.append(f"    sample size, MiB {statistics.mean(r['sample_bytes'] for r in rows) / 2**20:.2f}")
    for name in ("isic-handoff", "btcv-handoff"):
        handoff = results[name]
        lines.append(
            f"{name}: batch of {handoff['batch_size']} = {handoff['batch_bytes'] / 2**20:.1f} MiB, collate"
            f" {1000 * handoff['collate_s']:.1f} ms; {handoff['samples']} samples in process"
            f" {rate(handoff['samples'], handoff['in_process_s']):.1f}/s, through a 1-worker DataLoader"
            f" {rate(handoff['samples'], handoff['loader_1_worker_s']):.1f}/s")
    for name in ("e2e", "baseline-e2e"):
        if name in results:
            e2e = results[name]
            lines.append(
                f"{name}, small SAM at {e2e['image_size']} px on the ISIC mix, {e2e['num_workers']} loader"
                f" worker(s): training {rate(e2e['images'], e2e['with_loader_s']):.2f} img/s with the loader,"
                f" {rate(e2e['images'], e2e['step_alone_s']):.2f} img/s model step alone")
    if "baseline-isic-worker" in results:
        lines += side_by_side(results, options)
    return "\n".join(lines)


def side_by_side(results: dict, options: dict) -> list[str]:
    """This checkout against --baseline, measured in the same run: per-worker rates and their ratios."""
    depth, hit, per_size = options["depth"], options["btcv_hit_rate"], options["per_size"]
    mix = rate(len(results["isic-worker"]["seconds"]), sum(results["isic-worker"]["seconds"]))
    before_mix = rate(len(results["baseline-isic-worker"]["seconds"]), sum(results["baseline-isic-worker"]["seconds"]))
    sizes = [[rate(per_size, sum(results[name]["seconds"][group * per_size:(group + 1) * per_size]))
              for group in range(len(ISIC_SIZES))] for name in ("baseline-isic-worker", "isic-worker")]
    slices = rate(depth, statistics.median(results["btcv-worker"]["seconds"]))
    miss = statistics.median(results["baseline-btcv-worker-cold"]["seconds"])
    hit_s = statistics.median(results["baseline-btcv-worker-warm"]["seconds"])
    before_slices = depth / ((1 - hit) * miss + hit * hit_s)
    rss = {name: results[name]["peak_rss"] / 2**30 for name in
           ("isic-worker", "baseline-isic-worker", "btcv-worker", "baseline-btcv-worker-cold")}
    lines = [f"side by side with {options['baseline']} (same run):",
             f"  2D ISIC mix img/s per worker: {before_mix:.2f} -> {mix:.1f} ({mix / before_mix:.0f}x);"
             f" workers for {GPU_RATE:.0f} img/s: {math.ceil(GPU_RATE / before_mix)} -> {math.ceil(GPU_RATE / mix)};"
             f" peak RSS {rss['baseline-isic-worker']:.2f} -> {rss['isic-worker']:.2f} GiB",
             "  by size (" + " / ".join(f"{w}x{h}" for w, h in ISIC_SIZES) + "): "
             + " / ".join(f"{before:.2f} -> {now:.0f}" for before, now in zip(*sizes)),
             f"  3D BTCV slices/s per worker (baseline at a {100 * hit:.0f}% cache hit rate, miss"
             f" {rate(depth, miss):.1f}, hit {rate(depth, hit_s):.1f}): {before_slices:.1f} -> {slices:.0f}"
             f" ({slices / before_slices:.0f}x); peak RSS {rss['baseline-btcv-worker-cold']:.2f} ->"
             f" {rss['btcv-worker']:.2f} GiB"]
    if "e2e" in results and "baseline-e2e" in results:
        now, before = (rate(results[n]["images"], results[n]["with_loader_s"]) for n in ("e2e", "baseline-e2e"))
        lines.append(f"  end to end with the loader: {before:.2f} -> {now:.2f} img/s ({now / before:.1f}x)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/medsa-data-benchmark", help="fake folders and datasets cache")
    parser.add_argument("--per_size", type=int, default=2, help="ISIC pictures of each size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--mask_size", type=int, default=256)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], choices=["e2e"], help="leave these rows out")
    parser.add_argument("--e2e_workers", type=int, default=None,
                        help="loader workers of the end-to-end row (default: the training default)")
    parser.add_argument("--baseline", default=None,
                        help="a checkout of an earlier commit (git archive COMMIT | tar -x -C DIR) to measure in the"
                             " same run: its per-worker rates and end-to-end row beside this checkout's")
    parser.add_argument("--btcv_hit_rate", type=float, default=4 / 24,
                        help="share of BTCV samples that hit the baseline's per-worker cache (4 of 24 volumes)")
    parser.add_argument("--output", default=None, help="write every number as JSON here")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job_options", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        import torch

        torch.set_num_threads(1)
        print(json.dumps(JOBS[args.job](json.loads(args.job_options))))
        return

    root = Path(args.root)
    fake_folders(root, args.per_size)
    base = {"root": str(root), "per_size": args.per_size, "repeats": args.repeats, "image_size": args.image_size,
            "mask_size": args.mask_size}
    isic = {**base, "dataset": "isic", "prompt": "points:1", "depth": 1}
    btcv = {**base, "dataset": "btcv", "prompt": "box", "depth": args.depth}
    results = {}
    started = time.perf_counter()
    results["isic-prepare"] = run_job("prepare", {**isic, "repeats": 1})
    results["btcv-prepare"] = run_job("prepare", {**btcv, "repeats": 1})
    results["isic-worker"] = run_job("worker", isic)
    results["isic-stages"] = run_job("isic-stages", isic)
    results["isic-agreement"] = run_job("agreement", isic)
    results["btcv-worker"] = run_job("worker", btcv)
    results["btcv-stages"] = run_job("btcv-stages", btcv)
    results["isic-handoff"] = run_job("handoff", {**isic, "batch_size": 4, "loader_samples": 64})
    results["btcv-handoff"] = run_job("handoff", {**btcv, "batch_size": 2, "loader_samples": 64})
    e2e = {**isic, "batch_size": 2, "steps": 8, "num_workers": args.e2e_workers}
    if "e2e" not in args.skip:
        results["e2e"] = run_job("e2e", e2e)
    if args.baseline:
        results["baseline-isic-worker"] = run_job("worker", {**isic, "cold": True}, args.baseline)
        results["baseline-btcv-worker-cold"] = run_job("worker", {**btcv, "cold": True, "repeats": 1}, args.baseline)
        results["baseline-btcv-worker-warm"] = run_job("worker", {**btcv, "repeats": 1}, args.baseline)
        if "e2e" not in args.skip:
            results["baseline-e2e"] = run_job("e2e", {**e2e, "baseline": True}, args.baseline)
    report = summarise(results, {**base, "depth": args.depth, "baseline": args.baseline,
                                 "btcv_hit_rate": args.btcv_hit_rate})
    print(report)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.output:
        Path(args.output).write_text(json.dumps({"results": results, "report": report}, indent=1))


if __name__ == "__main__":
    main()
