"""Compare ways to adapt SAM on one data set and model: every `--methods` entry trained with every `--seeds`, then
one table (markdown and JSON) of trainable parameters, Dice / IoU / HD95 per class, run time and peak memory, as
mean and standard deviation over the seeds.

    python benchmarks/compare_methods.py --methods medsa lora decoder full "medsa --no_hyper_adapter" \
        --seeds 0 1 --output_dir outputs/compare-methods [any option of examples/train.py]

An entry of `--methods` is a `--method` of examples/train.py, optionally followed by options that apply to that
entry only ("lora --lora_rank 4"). Every run is `medsa_peft.training.train` in a fresh process (the peak memory of
that run alone; `--in_process`: all in this one), with its own output folder `<output_dir>/<entry>/seed-<seed>`,
where `comparison_run.json` records its options and measurements: a later call with the same options reuses it
instead of training again. All runs share the other options, so the same data, prompts, learning rate, loss and
evaluation clicks (`--eval_seed`, fixed across the seeds).

Rows besides the entries:
- "untrained": each run's scores before training (the base SAM; identical across runs whose methods start as SAM).
- "no model: all labelled voxels": every class predicted as every labelled voxel of the label map (any value but 0:
  the union of all classes, and of labelled structures that are no class, such as the MNI152 demo's grey matter) on
  the same evaluation cases, without a model or a prompt: what "find the labelled tissue near the click" alone
  scores, which an adapted model should beat. Left out where it is the truth itself (one class, nothing else
  labelled).

Time is the whole `train` call (data preparation, every evaluation, the steps); peak memory is the run process's
peak resident set on the CPU (DataLoader workers not counted), `torch.cuda.max_memory_allocated` on a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import re
import resource
import shlex
import statistics
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from medsa_peft.data.examples import decode_example
from medsa_peft.evaluation.metrics import summarize
from medsa_peft.evaluation.scoring import case_scores
from medsa_peft.files import atomic_path, write_json
from medsa_peft.training import MedSATrainingArguments, train
from medsa_peft.training.arguments import METHODS
from medsa_peft.training.model_card import CARD_METRICS, hub_model_id

REFERENCE = "no model: all labelled voxels"
UNTRAINED = "untrained"
# options that name places on this machine: left out of the JSON written for the reader
PATH_OPTIONS = ("model_name_or_path", "data_dir", "cache_dir", "output_dir")
OWN_OPTIONS = ("method", "seed", "output_dir")  # set per run by this script
TABLE = "comparison"  # <output_dir>/comparison.json and its markdown twin
RUN_RECORD = "comparison_run.json"  # in a run's folder: its options and measurements, reused when they match


def parse_args(
    argv: list[str] | None = None,
) -> tuple[argparse.Namespace, MedSATrainingArguments, list[MedSATrainingArguments]]:
    """This script's options, the options shared by every run, and the training arguments of every run (entries
    in order, seeds inside)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Every other option goes to each run as to examples/train.py (python examples/train.py --help).",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="entries: a method, then its own options")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="training seeds of every entry")
    parser.add_argument("--output_dir", default="outputs/compare-methods", help="runs and the table go here")
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="run in this process, not a fresh one each (quicker to start; peak memory is then the largest so far)",
    )
    options, shared = parser.parse_known_args(argv)
    for token in shared:
        if token.split("=")[0].lstrip("-").replace("-", "_") in OWN_OPTIONS:
            parser.error(f"{token}: set by this script per run; use --methods, --seeds and --output_dir")
    if len(set(options.methods)) != len(options.methods) or len(set(options.seeds)) != len(options.seeds):
        parser.error("--methods and --seeds must not repeat an entry")
    training_parser = HfArgumentParser(MedSATrainingArguments)
    try:
        (common,) = training_parser.parse_args_into_dataclasses(shared)
    except ValueError as error:
        parser.error(str(error))
    runs = []
    for entry in options.methods:
        method, *entry_options = shlex.split(entry)
        for seed in options.seeds:
            run_dir = Path(options.output_dir) / run_folder(entry) / f"seed-{seed}"
            argv = [*shared, "--method", method, *entry_options, "--seed", str(seed), "--output_dir", str(run_dir)]
            try:
                (arguments,) = training_parser.parse_args_into_dataclasses(argv)
            except ValueError as error:
                parser.error(f"{entry}: {error}")
            runs.append(arguments)
    return options, common, runs


def run_folder(entry: str) -> str:
    """A folder name for a `--methods` entry: "medsa --no_hyper_adapter" -> "medsa_no_hyper_adapter"."""
    return re.sub(r"[^A-Za-z0-9.]+", "_", entry).strip("_")


def measured_run(arguments: MedSATrainingArguments) -> dict:
    """`train(arguments)` in this process, with its wall time and this process's peak memory."""
    logging.basicConfig(format="%(message)s", stream=sys.stdout)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    metrics = train(arguments)
    seconds = time.perf_counter() - start
    if on_gpu:
        peak, kind = torch.cuda.max_memory_allocated(), "cuda_max_allocated"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_rss"
    return {"metrics": metrics, "seconds": seconds, "peak_memory_bytes": peak, "peak_memory_kind": kind}


def settings(arguments: MedSATrainingArguments) -> dict:
    """The options of a run that decide its result: all but the paths of this machine."""
    return {key: value for key, value in asdict(arguments).items() if key not in PATH_OPTIONS}


def run_fresh(arguments: MedSATrainingArguments) -> dict:
    """`measured_run` in a new process (spawned: no state or memory peak inherited from this one)."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measured_run, arguments).result()


def labelled_reference(arguments: MedSATrainingArguments) -> dict[str, float] | None:
    """Scores, on the evaluation cases of `arguments`, of predicting every class as every labelled voxel (label
    not 0; no model, no prompt); None where that is the truth of every case (nothing labelled but one class)."""
    data = arguments.prepared_dataset()
    per_volume: dict[str, dict] = defaultdict(dict)
    cases = 0
    informative = False
    for example in data.evaluation:  # the cases of `evaluate_model`: (example, class present), in its order
        decoded = decode_example(example, data.modality)
        labelled = decoded.label != 0
        for class_name, values in data.classes.items():
            truth = decoded.class_mask(values)
            if not truth.any() or (arguments.max_eval_cases is not None and cases >= arguments.max_eval_cases):
                continue
            cases += 1
            informative |= not np.array_equal(labelled, truth)
            per_volume[decoded.id][class_name] = case_scores(labelled, truth, decoded.spacing)
    return summarize(list(per_volume.values())) if informative else None


def spread(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for one value); NaN values are left out."""
    finite = [value for value in values if value == value]
    if not finite:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0}
    sd = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "sd": sd, "n": len(finite)}


def metric_keys(classes: list[str]) -> list[str]:
    """Summary keys of the table: each metric's mean over classes, then, for two classes or more, per class."""
    per_class = classes if len(classes) > 1 else []
    return [key for metric in CARD_METRICS for key in (metric, *(f"{metric}/{name}" for name in per_class))]


def table_rows(
    entries: list[str], results: dict[str, list[dict]], reference: dict | None, classes: list[str]
) -> list[dict]:
    """One row per entry (mean and spread over its seeds), the untrained scores, and the reference."""
    keys = metric_keys(classes)
    every_run = [run for runs in results.values() for run in runs]
    rows = [
        {
            "variant": UNTRAINED,
            "trainable": 0,
            "seeds": len(every_run),
            "metrics": {key: spread([run["metrics"]["before"][key] for run in every_run]) for key in keys},
        }
    ]
    for entry in entries:
        runs = results[entry]
        rows.append(
            {
                "variant": entry,
                "trainable": runs[0]["metrics"]["trainable_parameters"],
                "seeds": len(runs),
                "metrics": {key: spread([run["metrics"]["after"][key] for run in runs]) for key in keys},
                "seconds": spread([run["seconds"] for run in runs]),
                "peak_memory_mib": spread([run["peak_memory_bytes"] / 2**20 for run in runs]),
            }
        )
    if reference is not None:
        metrics = {key: spread([reference[key]]) for key in keys}
        rows.append({"variant": REFERENCE, "trainable": None, "seeds": None, "metrics": metrics})
    return rows


def _cell(value: dict | None, digits: int) -> str:
    if value is None or value["n"] == 0:
        return "-"
    if value["n"] == 1 or value["sd"] == 0:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f} ± {value['sd']:.{digits}f}"


def markdown_table(rows: list[dict], classes: list[str], memory_kind: str) -> str:
    """The comparison as a markdown table: mean ± standard deviation over seeds."""
    keys = metric_keys(classes)
    memory = "peak GPU MiB" if memory_kind == "cuda_max_allocated" else "peak RSS MiB"
    names = {"dice": "Dice", "iou": "IoU", "hd95": "HD95"}
    columns = [" ".join([names[key.split("/")[0]], *key.split("/")[1:]]) for key in keys]
    header = ["variant", "trainable", *columns, "time (s)", memory]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        trainable = "-" if row["trainable"] is None else f"{row['trainable']:,}"
        cells = [
            row["variant"],
            trainable,
            *(_cell(row["metrics"][key], 1 if key.startswith("hd95") else 3) for key in keys),
            _cell(row.get("seconds"), 0),
            _cell(row.get("peak_memory_mib"), 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    options, common, runs = parse_args(argv)
    logging.basicConfig(format="%(message)s", stream=sys.stdout, level=logging.INFO)
    logger = logging.getLogger("compare_methods")
    entries = options.methods
    results: dict[str, list[dict]] = defaultdict(list)
    for index, arguments in enumerate(runs):
        entry = entries[index // len(options.seeds)]
        logger.info(f"run {index + 1}/{len(runs)}: {entry}, seed {arguments.seed}")
        record = Path(arguments.output_dir) / RUN_RECORD
        previous = json.loads(record.read_text()) if record.is_file() else None
        if previous is not None and previous["settings"] == json.loads(json.dumps(settings(arguments))):
            result = previous["result"]
            logger.info("  done before with the same options: its result is reused")
        else:
            result = measured_run(arguments) if options.in_process else run_fresh(arguments)
            write_json({"settings": settings(arguments), "result": result}, record)
        results[entry].append(result)
        dice = result["metrics"]["after"]["dice"]
        peak = result["peak_memory_bytes"] / 2**20
        logger.info(f"  mean Dice {dice:.4f}, {result['seconds']:.0f} s, peak {peak:.0f} MiB")
    reference = labelled_reference(runs[0])
    first = results[entries[0]][0]
    classes = [key.split("/", 1)[1] for key in first["metrics"]["after"] if key.startswith("dice/")]
    rows = table_rows(entries, results, reference, classes)
    table = markdown_table(rows, classes, first["peak_memory_kind"])
    source = common.model_name_or_path
    report = {
        "methods": entries,
        "seeds": options.seeds,
        "model": (hub_model_id(source) or "a local SAM") if source else "the shipped tiny SAM",
        "dataset": first["metrics"]["dataset"],
        "evaluation_split": first["metrics"]["evaluation_split"],
        "settings": {key: value for key, value in settings(common).items() if key not in OWN_OPTIONS},
        "memory": first["peak_memory_kind"],
        "rows": rows,
        "runs": [
            {
                "variant": entry,
                "folder": f"{run_folder(entry)}/seed-{seed}",
                "seed": seed,
                **{key: run[key] for key in ("seconds", "peak_memory_bytes")},
                "before": run["metrics"]["before"],
                "after": run["metrics"]["after"],
            }
            for entry in entries
            for seed, run in zip(options.seeds, results[entry])
        ],
    }
    output_dir = Path(options.output_dir)
    write_json(report, output_dir / f"{TABLE}.json")
    with atomic_path(output_dir / f"{TABLE}.md") as temporary:
        temporary.write_text(table + "\n")
    print(table)
    return report


if __name__ == "__main__":
    main()
