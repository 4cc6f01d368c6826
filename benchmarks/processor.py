"""medsa_peft's pre- and post-processing beside transformers' SamProcessor, side by side in one run (issue 15).

    python benchmarks/processor.py                 # SAM ViT-B's frame: 1024 px pictures, 256 px masks
    python benchmarks/processor.py --threads 4 --repeats 21

Rows, for RGB pictures of the sizes of the ISIC 2018 mix (600x450 to 4288x2848) and a 512 x 512 CT slice:

- framing: `frame_images` given the 8-bit picture (uint8: resized as 8 bits, then scaled), `frame_images` given it
  scaled to [0, 1] (float32, what `MedSAPredictor.predict_logits` passes today), and SamImageProcessor (PIL) on
  the 8-bit picture; with the largest difference from the processor's pixel values, in 8-bit levels.
- post-processing of 8 slices' mask logits: `sam_logits_to_original` (SamImageProcessor's `post_process_masks`
  since issue 15) and the hand-written version it replaced (`hand_written_logits_to_original` below, the code of
  dd41d2d), with whether the two are bit-identical.

Times are medians of --repeats calls, the variants interleaved call by call, with --threads torch threads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PICTURE_SIZES = ((450, 600), (768, 1024), (1500, 2000), (1536, 2048), (2848, 4288))  # (height, width)
CT_SIZE = (512, 512)
SLICES = 8  # mask logits post-processed per call (a depth chunk)


def hand_written_logits_to_original(logits, original_size: tuple[int, int], image_size: int):
    """`sam_logits_to_original` before issue 15: the same three steps as post_process_masks, written out."""
    import torch.nn.functional as F

    from medsa_peft.data.preprocess import resized_shape

    new_height, new_width = resized_shape(original_size, image_size)
    upsampled = F.interpolate(logits[:, None].float(), (image_size, image_size), mode="bilinear", align_corners=False)
    cropped = upsampled[..., :new_height, :new_width]
    return F.interpolate(cropped, tuple(original_size), mode="bilinear", align_corners=False)[:, 0]


def interleaved(functions: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn `repeats` times after one warm-up round."""
    seconds = {name: [] for name in functions}
    for round_number in range(repeats + 1):
        for name, function in functions.items():
            started = time.perf_counter()
            function()
            if round_number:
                seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=1024)
    parser.add_argument("--mask_size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (PIL resizes on one)")
    args = parser.parse_args(argv)

    import torch
    from transformers import SamImageProcessorPil

    from medsa_peft.data.preprocess import SAM_PIXEL_STD, frame_images, sam_logits_to_original

    torch.set_num_threads(args.threads)
    size = args.image_size
    processor = SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size})
    level = 1 / 255 / min(SAM_PIXEL_STD)  # one 8-bit level in SAM's normalised units, at most
    rng = np.random.default_rng(0)
    print(f"{size} px frame, {args.mask_size} px masks, {args.threads} torch thread(s), medians of {args.repeats}"
          f" (cpus seen: {os.cpu_count()})")

    print("framing one picture, ms: frame_images(uint8) / frame_images(float32) / SamImageProcessor;"
          " processor / frame_images(uint8); max |difference| from the processor in 8-bit levels (uint8 / float32)")
    for height, width in (*PICTURE_SIZES, CT_SIZE):
        channels = 1 if (height, width) == CT_SIZE else 3
        picture = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
        grey = picture[..., 0] if channels == 1 else picture
        scaled = grey.astype(np.float32) / 255.0
        shown = np.repeat(picture, 3, axis=-1) if channels == 1 else picture  # the processor takes RGB arrays
        times = interleaved(
            {
                "uint8": lambda: frame_images(grey[None], size),
                "float32": lambda: frame_images(scaled[None], size),
                "processor": lambda: processor(images=shown, return_tensors="pt"),
            },
            args.repeats,
        )
        expected = processor(images=shown, return_tensors="pt")["pixel_values"]
        differences = [float((frame_images(x[None], size) - expected).abs().max()) / level for x in (grey, scaled)]
        name = f"{width}x{height}" + (" grey" if channels == 1 else "")
        print(f"  {name:16s} {1000 * times['uint8']:7.1f} / {1000 * times['float32']:7.1f} /"
              f" {1000 * times['processor']:7.1f}   {times['processor'] / times['uint8']:5.1f}x"
              f"   {differences[0]:.2f} / {differences[1]:.2f}")

    print(f"post-processing {SLICES} slices' logits, ms: sam_logits_to_original (post_process_masks) / hand-written;"
          " ratio; bit-identical")
    for height, width in (*PICTURE_SIZES, CT_SIZE):
        logits = torch.randn(SLICES, args.mask_size, args.mask_size, generator=torch.Generator().manual_seed(height))
        original = (height, width)
        times = interleaved(
            {
                "processor": lambda: sam_logits_to_original(logits, original, size),
                "hand-written": lambda: hand_written_logits_to_original(logits, original, size),
            },
            args.repeats,
        )
        same = torch.equal(sam_logits_to_original(logits, original, size),
                           hand_written_logits_to_original(logits, original, size))
        print(f"  {width}x{height:<11d} {1000 * times['processor']:7.1f} / {1000 * times['hand-written']:7.1f}"
              f"   {times['hand-written'] / times['processor']:5.2f}   {same}")


if __name__ == "__main__":
    main()
