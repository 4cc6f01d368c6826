"""The `medsa-peft` command line: `predict` segments files, `convert-official` converts the authors' checkpoints.

Each subcommand is one `add_*_command(subparsers)` function that registers its parser and its handler, so
more subcommands slot in beside them.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from .conversion import convert_official_checkpoint
from .data.preprocess import MODALITIES
from .inference.predictor import DTYPES, PHOTO, MedSAPredictor
from .inference.prompts import Box3D, SlicePrompt
from .io import DEFAULT_MAX_IMAGE_BYTES, PICTURE_SUFFIXES, file_suffix, read_image

__all__ = [
    "build_parser",
    "main",
]

# Options whose value may start with a minus sign (a negative coordinate), which argparse takes for an option.
_COORDINATE_OPTIONS = ("--box", "--point")
_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _numbers(text: str, counts: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(value) for value in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts:
        shapes = " or ".join(str(count) for count in counts)
        raise argparse.ArgumentTypeError(f"{what} takes {shapes} comma-separated numbers, got {text!r}")
    if not all(math.isfinite(value) for value in values):
        raise argparse.ArgumentTypeError(f"{what} takes finite numbers, got {text!r}")
    return values


def _box(text: str) -> list[float]:
    return _numbers(text, (4, 6), "--box (x0,y0,x1,y1 or x0,y0,z0,x1,y1,z1)")


def _point(text: str) -> list[float]:
    values = _numbers(text, (2, 3), "--point (x,y or x,y,label)")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (object) or 0 (background), got {text.split(',')[2].strip()!r} in {text!r}"
        )
    return values


def _byte_count(text: str) -> int:
    """A number of bytes, with an optional binary unit: 4294967296, 4G, 4GiB, 512M."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    count = int(float(match[1]) * _BYTE_UNITS[match[2].upper()]) if match else 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"--max-image-bytes takes a positive size such as 4G or 512M, got {text!r}")
    return count


def _attached_values(argv: Sequence[str]) -> list[str]:
    """`--box -5,1,20,30` -> `--box=-5,1,20,30`: argparse reads a value that starts with '-' as an option."""
    joined: list[str] = []
    for token in argv:
        if joined and joined[-1] in _COORDINATE_OPTIONS and re.match(r"-[\d.]", token):
            joined[-1] = f"{joined[-1]}={token}"
        else:
            joined.append(token)
    return joined


def _prompt(args: argparse.Namespace):
    """The predictor prompt from --box / --point: one 3D box, or one SlicePrompt for every slice."""
    if args.box is None and not args.point:
        raise ValueError("give a prompt: --box x0,y0,x1,y1 (or a 3D box x0,y0,z0,x1,y1,z1) and / or --point x,y")
    if args.box is not None and len(args.box) == 6:
        if args.point:
            raise ValueError("a 3D --box cannot be combined with --point")
        return Box3D(*args.box)
    points = [point[:2] for point in args.point]
    labels = [int(point[2]) if len(point) == 3 else 1 for point in args.point]
    return SlicePrompt(box=args.box, points=points, labels=labels)


def _input_stem(path: Path) -> str:
    suffix = file_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def _output_paths(inputs: list[Path], output: Path, overlay: Path | None) -> list[tuple[Path, Path | None]]:
    """(mask path, overlay path) per input: the given paths for one input, names inside folders for several."""
    if len(inputs) == 1:
        return [(output, overlay)]
    if output.suffix or (overlay is not None and overlay.suffix):
        raise ValueError(f"with {len(inputs)} inputs, --output (and --overlay) name folders, not files")
    paths = []
    writers: dict[Path, Path] = {}
    for source in inputs:
        suffix = ".png" if file_suffix(source) in PICTURE_SUFFIXES else ".nii.gz"
        stem = _input_stem(source)
        paths.append((output / f"{stem}_mask{suffix}", None if overlay is None else overlay / f"{stem}_overlay.png"))
        for written in filter(None, paths[-1]):
            if written in writers:
                raise ValueError(
                    f"inputs {writers[written]} and {source} would both write {written}; give inputs with different "
                    "file names, or run them separately"
                )
            writers[written] = source
    return paths


def _run_predict(args: argparse.Namespace) -> None:
    prompt = _prompt(args)
    outputs = _output_paths(args.input, args.output, args.overlay)
    predictor = MedSAPredictor.from_pretrained(
        args.adapter,
        args.model,
        device=args.device,
        dtype=args.dtype,
        chunk_depth=args.chunk_depth,
        overlap=args.overlap,
        batch_size=args.batch_size,
        compile=args.compile,
        fused_attention=args.fused_attention,
    )
    for source, (mask_path, overlay_path) in zip(tqdm(args.input, desc="images", unit="image"), outputs, strict=True):
        image = read_image(source, max_bytes=args.max_image_bytes)
        prediction = predictor.predict_image(image, prompt, modality=args.modality)
        written = [prediction.save(mask_path)]
        if overlay_path is not None:
            written.append(prediction.save_overlay(overlay_path))
        unit = "voxels" if prediction.image.is_volume else "pixels"
        tqdm.write(f"{source}: {int(prediction.mask.sum())} {unit} in the mask -> {', '.join(map(str, written))}")


def add_predict_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment NIfTI / DICOM volumes or PNG / JPG pictures with SAM + a Med-SA adapter",
        description="Coordinates are voxel indices of the input: x = column (axis 1), y = row (axis 0), z = slice "
        "(axis 2); box edges are pixel edges (x1, y1, z1 exclusive). A 4-number --box and the --points apply to "
        "every slice. Masks keep the input's shape, affine and spacing (volumes: NIfTI, pictures: PNG 0/255).",
    )
    parser.add_argument("--adapter", required=True, help="Med-SA adapter folder or Hub repo id")
    parser.add_argument("--model", help="SamModel folder or Hub id (default: the adapter's base model)")
    parser.add_argument("--input", required=True, nargs="+", type=Path, help="NIfTI, DICOM series folder, PNG or JPG")
    parser.add_argument("--output", required=True, type=Path, help="mask file (a folder with several inputs)")
    parser.add_argument("--overlay", type=Path, help="overlay PNG (a folder with several inputs)")
    parser.add_argument("--box", type=_box, help="x0,y0,x1,y1 on every slice, or a 3D box x0,y0,z0,x1,y1,z1")
    parser.add_argument(
        "--point", type=_point, action="append", default=[], help="x,y[,label]; repeatable; label 1 (default) or 0"
    )
    parser.add_argument(
        "--modality", choices=(*MODALITIES, PHOTO), help="intensity normalisation (default: DICOM tag; pictures: photo)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--max-image-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="refuse an input larger than this once decoded, read from its header (default 4G); e.g. 8G, 512M",
    )
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--chunk-depth", type=int, default=8, help="slices per pass of a depth (SD-Trans) adapter")
    parser.add_argument("--overlap", type=int, default=2, help="slices shared by consecutive chunks")
    parser.add_argument("--batch-size", type=int, default=8, help="slices per forward pass")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the encoder layers, decoder side (first pass slower)"
    )
    parser.add_argument(
        "--fused-attention", action="store_true", help="SAM's attention without its (HW x HW) bias: faster on GPUs"
    )
    parser.set_defaults(handler=_run_predict)


def _run_convert(args: argparse.Namespace) -> None:
    result = convert_official_checkpoint(
        args.checkpoint, args.out, depth_adapter=args.depth, allow_pickle=args.allow_pickle
    )
    vision = result.sam_config.vision_config
    print(
        f"SAM ViT (hidden {vision.hidden_size}, {vision.num_hidden_layers} layers, trained at {vision.image_size} px): "
        f"{result.sam_dir}\nMed-SA adapter (depth adapter: {result.config.depth_adapter}, decoder block: "
        f"{result.config.decoder_block}): {result.adapter_dir}"
    )
    if result.ignored_keys:
        print(f"left out {len(result.ignored_keys)} Depth_Adapter tensors (pass --depth to keep them)")


def add_convert_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-official",
        help="convert a checkpoint of the authors' Med-SA code into OUT/sam + OUT/adapter",
    )
    parser.add_argument("checkpoint", type=Path, help="the authors' checkpoint (.pth / .pt / .safetensors)")
    parser.add_argument("--out", required=True, type=Path, help="folder that receives sam/ and adapter/")
    parser.add_argument("--depth", action="store_true", help="keep the Depth_Adapter (3D, SD-Trans)")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="load checkpoints holding Python objects (trusted files only)"
    )
    parser.set_defaults(handler=_run_convert)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsa-peft", description="Medical SAM Adapter (Med-SA) on transformers' SAM")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_predict_command(subparsers)
    add_convert_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `medsa-peft` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(_attached_values(sys.argv[1:] if argv is None else argv))
    try:
        args.handler(args)
    except (ValueError, OSError) as error:
        print(f"medsa-peft {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
