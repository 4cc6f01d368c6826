"""Preparing a large folder of your own data: cases/s and peak memory of `prepare_dataset` on an MSD folder of
CT-like 512 x 512 x 100 volumes, at two folder sizes, to show that memory stays flat (no whole data set in RAM).

    python benchmarks/prepare_folder.py                                  # 100 cases, measured at 10 and 100
    python benchmarks/prepare_folder.py --cases 4 --sizes 2,4 --side 128 --depth 20   # a quick check

The folder is written once under --root (default: a new folder in the temp dir; ~25 MB per case gzipped at the
default size) and kept for later runs. A folder of N cases for each measured size shares the files of the largest
one through symbolic links, with its own dataset.json. Every measurement runs in a fresh child process, so its peak
RSS (`ru_maxrss`, and the largest of a 20 ms VmRSS sampler) belongs to that preparation alone; "imports" is the
RSS after importing the library, before preparing. Results: --out (default benchmarks/results/prepare-folder.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPACING = (0.8, 0.8, 2.5)  # mm: a usual abdominal CT grid
CLASSES = {"0": "background", "1": "liver", "2": "tumour"}


# ----------------------------------------------------------------------------------------------------------
# A synthetic CT folder in the Decathlon layout


def ct_case(side: int, depth: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like int16 volume in HU (air, a soft-tissue body, a liver with a tumour, scanner noise) and its uint8
    labels (1 liver, 2 tumour), both (side, side, depth)."""
    rng = np.random.default_rng(seed)
    axis = np.linspace(-1.0, 1.0, side, dtype=np.float32)
    rows, cols = axis[:, None], axis[None, :]
    body = (rows / 0.9) ** 2 + (cols / 0.7) ** 2 < 1.0
    centre = rng.uniform(-0.2, 0.2, 2)
    liver_2d = ((rows - centre[0]) / 0.45) ** 2 + ((cols - 0.25 - centre[1]) / 0.3) ** 2 < 1.0
    tumour_2d = (rows - centre[0]) ** 2 + (cols - 0.25 - centre[1]) ** 2 < 0.01
    image = np.empty((side, side, depth), np.int16)
    label = np.zeros((side, side, depth), np.uint8)
    for z in range(depth):
        extent = abs(z - depth / 2) < depth * 0.35  # the liver spans the middle slices
        slice_hu = np.where(body, 40, -1000).astype(np.int16)
        if extent:
            slice_hu[liver_2d] = 60
            slice_hu[tumour_2d] = 20
            label[..., z][liver_2d] = 1
            label[..., z][tumour_2d] = 2
        image[..., z] = slice_hu
    image += rng.normal(0.0, 12.0, image.shape).astype(np.int16)
    return image, label


def write_folder(root: Path, cases: int, side: int, depth: int) -> None:
    """Write `cases` cases into root/imagesTr and root/labelsTr, skipping those already there."""
    import nibabel as nib

    affine = np.diag([*SPACING, 1.0])
    for index in range(cases):
        name = f"ct_{index:03d}.nii.gz"
        if (root / "labelsTr" / name).is_file():
            continue
        image, label = ct_case(side, depth, seed=index)
        for folder, volume in (("imagesTr", image), ("labelsTr", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            partial = root / folder / f".{name}"
            nib.save(nib.Nifti1Image(volume, affine), partial)
            os.replace(partial, root / folder / name)
        print(f"wrote case {index + 1}/{cases}", file=sys.stderr, flush=True)


def folder_of(source: Path, target: Path, cases: int) -> Path:
    """A Decathlon folder of the first `cases` cases of `source`: links to its files, and its own dataset.json."""
    names = [f"ct_{index:03d}.nii.gz" for index in range(cases)]
    training = [{"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"} for name in names]
    if target != source:
        shutil.rmtree(target, ignore_errors=True)
        for entry in training:
            for relative in entry.values():
                link = target / relative
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source / relative)
    description = {"name": "synthetic CT", "modality": {"0": "CT"}, "labels": CLASSES, "training": training}
    (target / "dataset.json").write_text(json.dumps(description))
    return target


# ----------------------------------------------------------------------------------------------------------
# One measurement (child process)


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def measure(folder: Path, cache: Path) -> dict:
    """Prepare `folder` once and report the time, the cases and the memory."""
    from medsa_peft.data.builders import prepare_dataset

    imports = _rss_bytes()
    peak = [imports]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    data = prepare_dataset(str(folder), cache_dir=str(cache))
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    cases = len(data.train) + len(data.evaluation)
    return {
        "cases": cases,
        "seconds": round(seconds, 2),
        "cases_per_s": round(cases / seconds, 2),
        "rss_imports_mb": round(imports / 2**20),
        "rss_peak_sampled_mb": round(peak[0] / 2**20),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=100, help="cases written (the largest size measured)")
    parser.add_argument("--sizes", default="10,100", help="folder sizes measured, comma-separated")
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--root", type=Path, help="where the folders live (kept); default: a new temp folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "prepare-folder.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.cache)))
        return

    sizes = sorted(int(size) for size in args.sizes.split(","))
    if sizes[-1] > args.cases:
        parser.error(f"--sizes {args.sizes} measures more than the {args.cases} cases written")
    root = args.root or Path(tempfile.mkdtemp(prefix="medsa-prepare-folder-"))
    source = root / f"ct_{args.side}x{args.side}x{args.depth}"
    start = time.perf_counter()
    write_folder(source, args.cases, args.side, args.depth)
    written = sum(path.stat().st_size for path in source.rglob("*.nii.gz"))
    seconds = time.perf_counter() - start
    print(f"folder: {args.cases} cases, {written / 2**30:.2f} GiB gzipped, written in {seconds:.0f} s", flush=True)

    rows = []
    for size in sizes:
        folder = folder_of(source, source if size == args.cases else root / f"first_{size}", size)
        cache = Path(tempfile.mkdtemp(prefix="cache-", dir=root))
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--cache", str(cache)],
            capture_output=True,
            text=True,
            check=True,
        )
        shutil.rmtree(cache)
        row = {"side": args.side, "depth": args.depth, **json.loads(child.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    folder_of(source, source, args.cases)  # dataset.json of all the cases again, whatever was measured last
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(f"{'cases':>6} {'s':>8} {'cases/s':>8} {'RSS imports MB':>15} {'peak RSS MB':>12} {'ru_maxrss MB':>13}")
    for row in rows:
        print(
            f"{row['cases']:>6} {row['seconds']:>8} {row['cases_per_s']:>8} {row['rss_imports_mb']:>15} "
            f"{row['rss_peak_sampled_mb']:>12} {row['ru_maxrss_mb']:>13}"
        )


if __name__ == "__main__":
    main()
