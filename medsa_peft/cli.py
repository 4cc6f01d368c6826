"""The `medsa-peft` command line: `predict` segments files, `convert-official` converts the authors' checkpoints,
`export-dataset` publishes a data set to parquet and the Hub.

Each subcommand is one `add_*_command(subparsers)` function that registers its parser and its handler, so
more subcommands slot in beside them. Parsers take their choices from `medsa_peft.constants`; handlers import the
modules that do the work when they run, so that `--help` imports neither torch nor peft.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from .constants import DEFAULT_MAX_IMAGE_BYTES, DTYPE_NAMES, MODALITIES

if TYPE_CHECKING:
    from .inference.cases import PredictionCase

__all__ = [
    "build_parser",
    "main",
]

# Options whose value may start with a minus sign (a negative coordinate), which argparse takes for an option.
_COORDINATE_OPTIONS = ("--box", "--point")
_BYTE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_LISTED = 3  # failed cases named in the final error


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
    from .inference.prompts import Box3D, SlicePrompt

    if args.box is None and not args.point:
        raise ValueError("give a prompt: --box x0,y0,x1,y1 (or a 3D box x0,y0,z0,x1,y1,z1) and / or --point x,y")
    if args.box is not None and len(args.box) == 6:
        if args.point:
            raise ValueError("a 3D --box cannot be combined with --point")
        return Box3D(*args.box)
    points = [point[:2] for point in args.point]
    labels = [int(point[2]) if len(point) == 3 else 1 for point in args.point]
    return SlicePrompt(box=args.box, points=points, labels=labels)


def _output_paths(cases: list[PredictionCase], output: Path, overlay: Path | None) -> list[tuple[Path, Path | None]]:
    """(mask path, overlay path) per case: the given paths for one file, names inside folders for several cases or
    a folder of images. Refuses, before anything runs, two cases that would write one file and a mask or overlay
    that would replace an input."""
    if len(cases) == 1 and not cases[0].in_folder:
        return [(output, overlay)]
    if output.suffix or (overlay is not None and overlay.suffix):
        raise ValueError(f"with {len(cases)} cases, --output (and --overlay) name folders, not files")
    inputs = {case.source.resolve(): case.source for case in cases}
    paths = []
    writers: dict[Path, Path] = {}
    for case in cases:
        paths.append((output / case.mask_name, None if overlay is None else overlay / f"{case.name}_overlay.png"))
        for written in filter(None, paths[-1]):
            target = written.resolve()
            if target in inputs:
                raise ValueError(f"{written} would replace the input {inputs[target]}; give another --output folder")
            if target in writers:
                raise ValueError(
                    f"inputs {writers[target]} and {case.source} would both write {written}; give inputs with "
                    "different file names, or run them separately"
                )
            writers[target] = case.source
    return paths


def _run_predict(args: argparse.Namespace) -> None:
    from .inference.cases import prediction_cases
    from .inference.predictor import MedSAPredictor
    from .io import file_suffix, read_image

    prompt = _prompt(args)
    if args.propagate is not None and (args.multimask or args.box is not None and len(args.box) == 6):
        raise ValueError(
            "--propagate takes a 2D prompt on slice Z (--box x0,y0,x1,y1 and / or --point x,y); a 3D --box and "
            "--multimask do not apply"
        )
    cases = prediction_cases(args.input, args.channel)
    outputs = _output_paths(cases, args.output, args.overlay)
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
        video=args.propagate is not None,
    )
    for channels, count in sorted(Counter(case.channels for case in cases if case.channels > 1).items()):
        print(f"{count} of the cases have {channels} channel files: channel _{args.channel:04d} is segmented")
    failed = []
    for case, (mask_path, overlay_path) in zip(tqdm(cases, desc="cases", unit="case"), outputs, strict=True):
        try:
            image = read_image(case.source, max_bytes=args.max_image_bytes)
            if args.propagate is not None:
                prediction = predictor.propagate_image(image, args.propagate, prompt, modality=args.modality)
            else:
                prediction = predictor.predict_image(image, prompt, modality=args.modality, multimask=args.multimask)
            written = [prediction.save(mask_path)]
            if args.multimask:  # beside the mask: <mask name>_scores.json
                stem = mask_path.name[: len(mask_path.name) - len(file_suffix(mask_path))]
                written.append(prediction.save_scores(mask_path.with_name(f"{stem}_scores.json")))
            if overlay_path is not None:
                written.append(prediction.save_overlay(overlay_path))
        except (ValueError, OSError) as error:
            if len(cases) == 1:
                raise
            failed.append(case.name)  # the other cases still run
            tqdm.write(f"medsa-peft predict: case {case.name} failed: {error}", file=sys.stderr)
            continue
        unit = "voxels" if prediction.image.is_volume else "pixels"
        tqdm.write(f"{case.source}: {int(prediction.mask.sum())} {unit} in the mask -> {', '.join(map(str, written))}")
    if failed:
        shown = ", ".join(failed[:_LISTED]) + (f" and {len(failed) - _LISTED} more" if len(failed) > _LISTED else "")
        raise ValueError(f"{len(failed)} of {len(cases)} cases failed ({shown}); the masks of the others are written")


def add_predict_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment NIfTI / DICOM volumes or PNG / JPG pictures with SAM + a Med-SA adapter",
        description="Coordinates are voxel indices of the input: x = column (axis 1), y = row (axis 0), z = slice "
        "(axis 2); box edges are pixel edges (x1, y1, z1 exclusive). A single non-axial slice (one voxel along an "
        "axis other than the axial one: a (1, H, W) or (H, 1, W) NIfTI, a sagittal or coronal DICOM file) is one "
        "picture: x and y count the columns and rows of its two other axes as stored, z is 0. A 4-number --box and "
        "the --points apply to every slice. Masks keep the input's shape, affine and spacing (volumes: NIfTI, "
        "pictures: PNG 0/255).",
    )
    parser.add_argument(
        "--adapter",
        help="adapter folder or Hub repo id: Med-SA, or PEFT LoRA (examples/train.py --method medsa|lora); without "
        "it, --model runs alone (a whole model of --method decoder|full)",
    )
    parser.add_argument(
        "--model",
        help="SAM, SAM-HQ or SAM 2 folder or Hub id (default: the adapter's base model)",
    )
    parser.add_argument(
        "--input",
        required=True,
        nargs="+",
        type=Path,
        help="NIfTI, DICOM series folder, PNG or JPG, or a folder of them such as nnU-Net's imagesTs/ (one mask per "
        "case: CASE_0000.nii.gz -> CASE.nii.gz)",
    )
    parser.add_argument(
        "--output", required=True, type=Path, help="mask file (a folder with several inputs or a folder of images)"
    )
    parser.add_argument("--overlay", type=Path, help="overlay PNG (a folder with several inputs or a folder of images)")
    parser.add_argument(
        "--channel", type=int, default=0, help="folders of nnU-Net channel files: the channel segmented (0: _0000)"
    )
    parser.add_argument("--box", type=_box, help="x0,y0,x1,y1 on every slice, or a 3D box x0,y0,z0,x1,y1,z1")
    parser.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        help="x,y[,label]; repeatable; label 1 (default) or 0. Correction clicks: run again with x,y,1 added on a "
        "missed part and x,y,0 on a false positive; all points go to SAM together",
    )
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="SAM's three candidate masks per slice, the highest predicted IoU written; the IoU scores go to "
        "<mask name>_scores.json beside the mask",
    )
    parser.add_argument(
        "--propagate",
        type=int,
        metavar="Z",
        help="a SAM 2 video model (a sam2_video --model) tracks the mask of the 2D --box / --point given on slice Z "
        "through the whole volume, as through the frames of a video",
    )
    parser.add_argument(
        "--modality", choices=MODALITIES, help="intensity normalisation (default: DICOM tag; pictures: photo)"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    parser.add_argument(
        "--max-image-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="refuse an input larger than this once decoded, read from its header (default 4G); e.g. 8G, 512M",
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
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
    from .conversion import convert_official_checkpoint

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


def _run_export_dataset(args: argparse.Namespace) -> None:
    from .data.builders import prepare_dataset
    from .data.publish import export_dataset, push_dataset

    data = prepare_dataset(
        args.source,
        args.dataset_config,
        args.data_dir,
        args.cache_dir,
        channel=args.channel,
        modality=args.modality,
        classes=args.classes,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )
    folder = export_dataset(data, args.out_dir, license=args.license, repo_id=args.push_to_hub)
    print(
        f"{data.name}: {len(data.train)} train and {len(data.evaluation)} {data.evaluation_split} examples, classes "
        f"{', '.join(data.classes)}, modality {data.modality} -> {folder}"
    )
    if args.push_to_hub:
        url = push_dataset(folder, args.push_to_hub, private=args.private)
        print(f"pushed to the Hub as the data set {args.push_to_hub} ({url}); --dataset {args.push_to_hub} trains on it")


def add_export_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "export-dataset",
        help="export a data set to parquet with a dataset card, and optionally push it to the Hub",
        description="Prepare SOURCE as examples/train.py's --dataset does, write its train and held-out splits to "
        "OUT_DIR/data/*.parquet (every file embedded) with a dataset card (README.md) whose YAML holds the classes "
        "and the modality, and push OUT_DIR to the Hub. `--dataset user/name` then trains on it and "
        "`datasets.load_dataset('user/name')` loads it.",
    )
    parser.add_argument(
        "source", help="mni152, btcv, brats, refuge, isic, thyroid, or a folder (MSD / nnU-Net v1, nnU-Net v2, images/)"
    )
    parser.add_argument("out_dir", type=Path, help="new (or empty) folder that receives README.md and data/")
    parser.add_argument("--push-to-hub", "--push_to_hub", metavar="USER/NAME", help="Hub data set to upload OUT_DIR to")
    parser.add_argument("--private", action="store_true", help="create the Hub data set private")
    parser.add_argument(
        "--license", default="unknown", help="license identifier for the card, e.g. cc-by-4.0 (default: unknown)"
    )
    parser.add_argument("--dataset-config", "--dataset_config", help="builder config, e.g. 3d for mni152")
    parser.add_argument("--data-dir", "--data_dir", help="the manual download of a builder's data set")
    parser.add_argument("--cache-dir", "--cache_dir", help="where `datasets` prepares the data set")
    parser.add_argument("--channel", default="0", help="folders of volumes: channel fed to SAM, by index or name")
    parser.add_argument("--modality", help="intensity rule: ct, mri, fundus, dermoscopy, ultrasound or photo")
    parser.add_argument("--classes", help='override the classes, as JSON: \'{"liver": [1], "tumour": [2]}\'')
    parser.add_argument(
        "--validation-fraction",
        "--validation_fraction",
        type=float,
        default=0.2,
        help="folders without a labelled test split: share of cases held out (seeded by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out cases")
    parser.set_defaults(handler=_run_export_dataset)


def _run_demo(args: argparse.Namespace) -> None:
    import logging

    from .web import DemoApp, DemoServer, load_demo_predictor

    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("medsa_peft.web").setLevel(logging.INFO)
    predictor = load_demo_predictor(args.model, args.adapter, device=args.device, dtype=args.dtype)
    app = DemoApp(predictor, max_image_bytes=args.max_image_bytes)
    with app, DemoServer(app, (args.host, args.port)) as server:
        print(f"medsa-peft demo: open {server.url} in a browser (Ctrl-C stops the server)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


def add_demo_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="a web page to upload an image, click on it, see the mask and download it",
        description="Serve the interactive demo on this machine: upload a NIfTI volume, a DICOM file or series, or a "
        "PNG / JPEG picture, click on a slice to segment it (shift-click or right-click: background), download the "
        "mask (NIfTI for volumes, PNG for pictures). Without --adapter and --model it runs the shipped tiny SAM.",
    )
    parser.add_argument("--adapter", help="Med-SA adapter folder or Hub repo id (default: SAM without an adapter)")
    parser.add_argument(
        "--model", help="SamModel folder or Hub id (default: the adapter's base model, else the shipped tiny SAM)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="port to serve on; 0 takes a free one (default 8000)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=DTYPE_NAMES)
    parser.add_argument(
        "--max-image-bytes",
        type=_byte_count,
        default=DEFAULT_MAX_IMAGE_BYTES,
        help="refuse an upload larger than this once decoded, read from its header (default 4G); e.g. 8G, 512M",
    )
    parser.set_defaults(handler=_run_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsa-peft", description="Medical SAM Adapter (Med-SA) on transformers' SAM")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_predict_command(subparsers)
    add_convert_command(subparsers)
    add_export_command(subparsers)
    add_demo_command(subparsers)
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
