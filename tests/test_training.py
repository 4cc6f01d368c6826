"""examples/train.py under Accelerate: learning signal, resume after a kill, two processes, Hub push, NaN stop,
loader defaults."""

import dataclasses
import io
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
import torch
from peft import PeftConfig, PeftModel
from PIL import Image
from safetensors.torch import load_file
from transformers import HfArgumentParser, SamModel

import medsa_peft  # noqa: F401
from medsa_peft.data.samples import EpochSampler
from medsa_peft.training.checkpoints import TRAINER_STATE, checkpoint_dirs, latest_checkpoint
from medsa_peft.training.losses import DiceBCELoss
from helpers import LocalHub, quick_training
from medsa_peft.training import MedSATrainingArguments, train
from medsa_peft.training import loop
from medsa_peft.training.arguments import DEFAULT_MAX_STEPS
from medsa_peft.training.loop import default_num_workers, train_loader

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = str(REPO_ROOT / "examples" / "train.py")


def quick_args(tiny_sam_dir, dataset_cache, output_dir, *extra):
    return [
        "--model",
        tiny_sam_dir,
        "--cache_dir",
        dataset_cache,
        "--output_dir",
        str(output_dir),
        "--max_eval_cases",
        "2",
        "--eval_every",
        "0",
        "--report_to",
        "none",
        *extra,
    ]


def environment():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_the_demo_without_arguments_learns_offline(tmp_path, compare_methods, dataset_cache):
    """The README's main command, as written, in an empty folder with an empty Hugging Face home: it learns white
    matter well above the untrained model and above predicting all labelled tissue (no model)."""
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", TRAIN_SCRIPT],
        cwd=tmp_path,
        env={**environment(), "HF_HOME": str(tmp_path / "hf")},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "outputs" / "medsa-demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dataset"] == "mni152" and metrics["evaluation_split"] == "test" and metrics["steps"] == 600
    before, after = metrics["before"], metrics["after"]
    reference = compare_methods.labelled_reference(MedSATrainingArguments(cache_dir=dataset_cache))
    assert after["dice"] > before["dice"] + 0.2, (before["dice"], after["dice"])
    assert after["dice"] > reference["dice"] + 0.1, (reference["dice"], after["dice"])
    assert after["dice/white_matter"] == after["dice"]  # the demo's one class
    assert f"step 0 (test): mean Dice {before['dice']:.4f}" in result.stdout
    assert Image.open(run / "overlay.png").size[0] >= 384
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def test_resume_after_a_kill_continues_from_the_last_complete_checkpoint(tiny_sam_dir, dataset_cache, tmp_path):
    args = quick_args(tiny_sam_dir, dataset_cache, tmp_path, "--max_steps", "400", "--save_every", "2")
    process = subprocess.Popen(
        [sys.executable, TRAIN_SCRIPT, *args], env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(checkpoint_dirs(tmp_path)) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)  # no clean-up of any kind, as a crash or a pre-empted node
    process.wait()
    assert len(checkpoint_dirs(tmp_path)) >= 2, "the run made no checkpoints before the deadline"
    killed_at = json.loads((latest_checkpoint(tmp_path) / TRAINER_STATE).read_text())["step"]
    assert killed_at >= 4 and not (tmp_path / "adapter").exists()

    target = killed_at + 2
    resumed = subprocess.run(
        [
            sys.executable,
            TRAIN_SCRIPT,
            *args[:-4],
            "--save_every",
            "1",
            "--max_steps",
            str(target),
            "--resume",
            "latest",
        ],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {killed_at}" in resumed.stdout
    steps = [json.loads((path / TRAINER_STATE).read_text())["step"] for path in checkpoint_dirs(tmp_path)]
    assert steps == [target - 1, target]  # two more optimiser steps, counted from the checkpoint
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == target
    assert not list((tmp_path / "checkpoints").glob(".*"))  # nothing half-written left visible or hidden


def test_two_processes_train_identical_weights_and_save_one_result(tiny_sam_dir, dataset_cache, tmp_path):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        TRAIN_SCRIPT,
        *quick_args(tiny_sam_dir, dataset_cache, tmp_path, "--max_steps", "3", "--save_every", "0"),
    ]
    result = subprocess.run(
        command, env={**environment(), "ACCELERATE_USE_CPU": "true"}, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapter weights identical on all 2 process(es)" in result.stdout
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 3


def test_push_to_hub_uploads_a_folder_that_loads(tiny_sam_dir, dataset_cache, tmp_path, monkeypatch):
    hub = LocalHub(tmp_path / "hub-home")
    hub.install(monkeypatch.setattr)
    args = quick_training(
        tiny_sam_dir,
        dataset_cache,
        tmp_path / "run",
        max_steps=2,
        max_eval_cases=2,
        push_to_hub=True,
        hub_model_id="someone/medsa-mni",
    )
    metrics = train(args)
    assert hub.uploaded_folders == ["someone/medsa-mni"]  # the adapter folder as written, through upload_folder
    uploaded = hub.snapshot_dir("someone/medsa-mni")
    assert sorted(p.name for p in uploaded.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    card = (uploaded / "README.md").read_text()
    assert "mni152" in card and "points:3" in card and "| white_matter |" in card and "library_name: peft" in card
    assert f"{metrics['after']['dice']:.4f}" in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["license"] == "apache-2.0" and metadata["metrics"] == ["dice", "iou", "hd95"]
    assert "base_model" not in metadata  # the base is a local folder: no Hub id to name
    results = metadata["model-index"][0]["results"][0]
    assert results["dataset"]["split"] == "test" and results["metrics"][0]["value"] == metrics["after"]["dice"]
    # nothing written for the user names a path of this machine (the base SAM's folder, the run's folder)
    for written in [*uploaded.iterdir(), tmp_path / "run" / "metrics.json"]:
        text = written.read_text(errors="ignore") if written.suffix != ".safetensors" else ""
        assert str(tiny_sam_dir) not in text and str(tmp_path) not in text, written.name

    model = PeftModel.from_pretrained(SamModel.from_pretrained(tiny_sam_dir), uploaded)
    assert model.peft_config["default"].peft_type == "MEDSA"


def test_a_non_finite_loss_stops_training_before_anything_is_saved(tiny_sam_dir, dataset_cache, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_forward = DiceBCELoss.forward

    def loss_that_blows_up(self, logits, targets):
        calls["n"] += 1
        loss = real_forward(self, logits, targets)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(DiceBCELoss, "forward", loss_that_blows_up)
    args = quick_training(tiny_sam_dir, dataset_cache, tmp_path, max_steps=5, checkpointing_steps=1)
    with pytest.raises(FloatingPointError, match="loss became nan at step 2"):
        train(args)
    assert [path.name for path in checkpoint_dirs(tmp_path)] == ["step-000001", "step-000002"]
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "metrics.json").exists()
    saved = load_file(latest_checkpoint(tmp_path) / "model.safetensors")
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())
    assert saved and all(".medsa_" in key for key in saved)  # checkpoints hold what trains, not SAM


def test_a_non_finite_loss_between_checkpoints_stops_at_the_next_logging_step(
    tiny_sam_dir, dataset_cache, tmp_path, monkeypatch
):
    """The loss stays on the device between logging steps: a NaN is caught there, a few steps later, before
    anything is written."""
    calls = {"n": 0}
    real_forward = DiceBCELoss.forward

    def loss_that_blows_up(self, logits, targets):
        calls["n"] += 1
        loss = real_forward(self, logits, targets)
        return loss * float("inf") if calls["n"] == 2 else loss

    monkeypatch.setattr(DiceBCELoss, "forward", loss_that_blows_up)
    args = quick_training(tiny_sam_dir, dataset_cache, tmp_path, max_steps=8, logging_steps=4, num_workers=0)
    with pytest.raises(FloatingPointError, match="loss became inf at step 1; training stopped at step 4"):
        train(args)
    assert calls["n"] == 4 and not checkpoint_dirs(tmp_path) and not (tmp_path / "adapter").exists()


def test_loader_defaults_overlap_loading_with_the_step(monkeypatch):
    loader = train_loader(list(range(10)), batch_size=2, num_workers=1, pin_memory=True)
    assert loader.persistent_workers and loader.prefetch_factor == 4 and loader.num_workers == 1 and loader.pin_memory
    assert not train_loader(list(range(10)), batch_size=2, num_workers=0, pin_memory=False).persistent_workers
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_num_workers() == 8 and default_num_workers(local_processes=4) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_num_workers() == 0


def test_resuming_with_other_adapter_options_is_refused(tiny_sam_dir, dataset_cache, tmp_path):
    train(quick_training(tiny_sam_dir, dataset_cache, tmp_path, max_steps=1, checkpointing_steps=1))
    with pytest.raises(ValueError, match="other adapter options"):
        train(
            quick_training(
                tiny_sam_dir,
                dataset_cache,
                tmp_path,
                max_steps=2,
                checkpointing_steps=1,
                resume_from_checkpoint="latest",
                official=True,
            )
        )


def test_a_volume_data_set_trains_slice_by_slice_at_depth_one(tiny_sam_dir, dataset_cache, tmp_path):
    """The paper's 2D-on-BTCV setting: 3D examples, no depth adapter, every slice on its own."""
    args = quick_training(tiny_sam_dir, dataset_cache, tmp_path, dataset_config="3d", volume_depth=1, max_steps=2)
    metrics = train(args)
    assert metrics["dataset_config"] == "3d" and metrics["steps"] == 2
    assert not PeftConfig.from_pretrained(tmp_path / "adapter").depth_adapter


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="cannot parse prompt"):
        MedSATrainingArguments(prompt="lasso")
    with pytest.raises(ValueError, match="hub_model_id"):
        MedSATrainingArguments(push_to_hub=True)
    with pytest.raises(ValueError, match="volume_depth"):
        MedSATrainingArguments(volume_depth=0)
    with pytest.raises(ValueError, match="logging_steps"):
        MedSATrainingArguments(logging_steps=0)
    with pytest.raises(ValueError, match="num_workers"):
        MedSATrainingArguments(num_workers=-1)


def parse(*options: str) -> MedSATrainingArguments:
    (args,) = HfArgumentParser(MedSATrainingArguments).parse_args_into_dataclasses(list(options))
    return args


def test_hf_option_names_and_their_former_aliases_parse_alike(tiny_sam_dir, tmp_path):
    checkpoint = tmp_path / "checkpoints" / "step-000001"  # "latest" must name a complete checkpoint at parse time
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"step": 1}')
    renamed = {
        "output_dir": ("--output_dir", str(tmp_path)),
        "model_name_or_path": ("--model", tiny_sam_dir),
        "per_device_train_batch_size": ("--batch_size", "3"),
        "per_device_eval_batch_size": ("--eval_batch_size", "5"),
        "resume_from_checkpoint": ("--resume", "latest"),
        "checkpointing_steps": ("--save_every", "7"),
    }
    new = parse(*[item for name, (_, value) in renamed.items() for item in (f"--{name}", value)])
    former = parse(*[item for alias, value in renamed.values() for item in (alias, value)])
    assert new == former
    assert (new.model_name_or_path, new.per_device_train_batch_size, new.per_device_eval_batch_size) == (
        tiny_sam_dir,
        3,
        5,
    )
    assert (new.resume_from_checkpoint, new.checkpointing_steps) == ("latest", 7)
    assert parse("--lr_scheduler_type", "linear", "--num_train_epochs", "2.5").lr_scheduler_type == "linear"
    assert parse().lr_scheduler_type == "cosine" and parse().max_steps is None


def test_max_steps_wins_over_epochs_and_epochs_count_optimisation_steps():
    assert MedSATrainingArguments(max_steps=5, num_train_epochs=3).training_steps(steps_per_epoch=10) == 5
    assert MedSATrainingArguments(num_train_epochs=2.5).training_steps(steps_per_epoch=3) == 8
    assert MedSATrainingArguments(num_train_epochs=0.01).training_steps(steps_per_epoch=3) == 1
    assert MedSATrainingArguments().training_steps(steps_per_epoch=3) == DEFAULT_MAX_STEPS == 600


def test_every_option_has_help_and_shows_its_default():
    options = dataclasses.fields(MedSATrainingArguments)
    assert [field.name for field in options if not field.metadata.get("help")] == []
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--help"], env=environment(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    usage, listing = result.stdout.split("options:")
    entries = listing.split("\n  --")[1:]  # one per option, its help wrapped below it
    for field in options:
        (entry,) = [entry for entry in entries if entry.startswith(f"{field.name} ") or entry == field.name]
        assert "(default: " in " ".join(entry.split()), field.name
    for alias in ("--model", "--batch_size", "--eval_batch_size", "--resume", "--save_every"):
        assert f"{alias} " in listing


@pytest.mark.parametrize(
    "options, message",
    [
        (["--save_every", "-1"], "--checkpointing_steps/--save_every must be at least 0 (0: never), got -1"),
        (["--checkpointing_steps", "-1"], "--checkpointing_steps/--save_every must be at least 0"),
        (["--eval_every", "-1"], "--eval_every must be at least 0 (0: only at the start and end), got -1"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be at least 1, got 0"),
        (["--batch_size", "0"], "--per_device_train_batch_size/--batch_size must be at least 1, got 0"),
        (["--num_train_epochs", "0"], "--num_train_epochs must be above 0, got 0"),
        (["--max_steps", "0"], "--max_steps must be at least 1, got 0"),
        (["--model", "./no/such/sam"], "--model_name_or_path/--model ./no/such/sam: the folder does not exist"),
    ],
)
def test_bad_training_options_are_refused_at_parse_time(options, message):
    with pytest.raises(ValueError) as error:
        parse(*options)
    assert str(error.value).startswith(message), str(error.value)
    assert parse("--save_every", "0", "--eval_every", "0").checkpointing_steps == 0  # 0 keeps its meaning


def test_an_adapter_folder_given_as_the_model_is_named_as_such(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="is a Med-SA adapter folder, not a SAM.*medsa-peft predict.*--resume"):
        parse("--model", str(tmp_path))


def test_the_script_reports_a_bad_option_in_one_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--save_every", "-1", "--output_dir", str(tmp_path / "run")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    error = "--checkpointing_steps/--save_every must be at least 0 (0: never), got -1"
    # one line, no traceback; other lines come only from libraries' import-time warnings (old pydicom releases)
    ours = [line for line in result.stderr.splitlines() if "train.py" in line or "Traceback" in line]
    assert ours == [f"train.py: error: {error}"], result.stderr
    assert not (tmp_path / "run").exists()


def test_the_script_reports_bad_data_found_by_the_run_in_one_line_and_exits_1(tmp_path):
    (tmp_path / "BTCV").mkdir()
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, "--dataset", "btcv", "--data_dir", str(tmp_path / "BTCV"),
         "--cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run")],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if "train.py" in line or "Traceback" in line]
    assert ours == [f"train.py: error: BTCV data_dir {tmp_path / 'BTCV'} is empty"], result.stderr
    assert not (tmp_path / "run" / "adapter").exists()


def test_epochs_set_the_steps_through_the_chosen_schedule_and_the_run_is_summarised(
    tiny_sam_dir, dataset_cache, tmp_path, monkeypatch, caplog
):
    schedules = []
    real_get_scheduler = loop.get_scheduler

    def recording_get_scheduler(name, optimizer, **kwargs):
        schedules.append((name, kwargs))
        return real_get_scheduler(name, optimizer, **kwargs)

    monkeypatch.setattr(loop, "get_scheduler", recording_get_scheduler)
    caplog.set_level(logging.INFO, logger="medsa_peft")
    args = quick_training(
        tiny_sam_dir,
        dataset_cache,
        tmp_path,
        num_train_epochs=0.02,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        lr_scheduler_type="linear",
        warmup_steps=1,
        num_workers=0,
    )
    metrics = train(args)
    (summary,) = [record.getMessage() for record in caplog.records if "Running training" in record.getMessage()]
    samples = int(summary.split("Num samples = ")[1].split("\n")[0].replace(",", ""))
    steps_per_epoch = math.ceil(math.ceil(samples / 2) / 2)
    steps = math.ceil(0.02 * steps_per_epoch)
    assert metrics["steps"] == steps
    assert schedules == [("linear", {"num_warmup_steps": 1, "num_training_steps": steps})]
    for line in (
        "Batch size per device = 2",
        "Processes = 1",
        "Gradient accumulation steps = 2",
        "Total train batch size (per device x processes x accumulation) = 4",
        f"Total optimisation steps = {steps}",
        f"Num epochs = {steps / steps_per_epoch:.2f} ({steps_per_epoch:,} optimisation steps each)",
    ):
        assert f"  {line}" in summary, line


def test_the_training_order_follows_from_the_seed_and_the_epoch_alone():
    """The loader asks the samples for keys (epoch, item), each item once an epoch; the samples draw from them."""
    sampler = EpochSampler(6, seed=3)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(item for _, item in first) == sorted(item for _, item in second) == list(range(6))
    assert {epoch for epoch, _ in first} == {0} and {epoch for epoch, _ in second} == {1}
    assert [item for _, item in first] != [item for _, item in second]
    sampler.set_epoch(0)
    assert list(sampler) == first == list(EpochSampler(6, seed=3))
    assert list(EpochSampler(6, seed=4)) != first


@pytest.mark.parametrize(
    "options, steps, stop",
    [
        # 2D, no workers: 30 optimisation steps an epoch of 2 accumulated batches; the stop is inside the first epoch
        (dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_workers=0), 3, 2),
        # 3D chunks with a depth adapter and a worker: 2 steps an epoch; the stop is inside the second epoch
        (dict(dataset_config="3d", volume_depth=2, per_device_train_batch_size=8, num_workers=1), 5, 3),
        # SAM's iterative protocol: the correction clicks drawn from (seed, step, micro-batch) as well
        (dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_workers=0, correction_clicks=2), 3, 2),
    ],
    ids=["2d-no-workers", "3d-one-worker", "2d-correction-clicks"],
)
def test_a_resumed_run_ends_with_exactly_the_weights_of_an_uninterrupted_one(
    tiny_sam_dir, dataset_cache, tmp_path, options, steps, stop
):
    def train_to_the_end(output_dir, **more):
        more.update(options, max_steps=steps, warmup_steps=0)
        train(quick_training(tiny_sam_dir, dataset_cache, output_dir, **more))

    train_to_the_end(tmp_path / "whole", checkpointing_steps=stop)
    # the run stopped at its checkpoint: the checkpoint, and what a kill during the next save leaves behind
    checkpoint = f"step-{stop:06d}"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / checkpoint, tmp_path / "stopped" / "checkpoints" / checkpoint)
    (tmp_path / "stopped" / "checkpoints" / f".step-{stop + 1:06d}.partial").mkdir()
    train_to_the_end(tmp_path / "stopped", resume_from_checkpoint="latest")

    whole, resumed = (load_file(tmp_path / run / "adapter/adapter_model.safetensors") for run in ("whole", "stopped"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)
    assert not [path.name for path in (tmp_path / "stopped" / "checkpoints").iterdir() if path.name.startswith(".")]


@pytest.fixture(scope="module")
def run_logged_to_a_file(tiny_sam_dir, dataset_cache, tmp_path_factory):
    """examples/train.py with its output (stdout and stderr) in a log file, TensorBoard on, a checkpoint at step 2."""
    output_dir = tmp_path_factory.mktemp("logged-run")
    more = ["--max_steps", "3", "--checkpointing_steps", "2", "--logging_steps", "1", "--num_workers", "0"]
    more += ["--eval_every", "2", "--report_to", "tensorboard"]  # the later of two values counts
    command = [sys.executable, TRAIN_SCRIPT, *quick_args(tiny_sam_dir, dataset_cache, output_dir, *more)]
    with open(output_dir / "train.log", "w") as log:
        result = subprocess.run(command, env=environment(), stdout=log, stderr=subprocess.STDOUT, timeout=600)
    log = (output_dir / "train.log").read_text()
    assert result.returncode == 0, log[-3000:]
    return output_dir, log


def test_a_log_file_gets_progress_lines_and_no_progress_bars(run_logged_to_a_file):
    _, log = run_logged_to_a_file
    assert "\r" not in log and "\x1b[" not in log
    for step in (1, 2, 3):
        assert f"step {step}/3: loss " in log
    assert "step 0 (test): mean Dice" in log and "step 2 (test): mean Dice" in log


def test_the_evaluation_before_training_is_logged_to_the_tracker_at_step_0(run_logged_to_a_file):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, log = run_logged_to_a_file
    events = EventAccumulator(str(output_dir / "medsa"))
    events.Reload()
    dice = {event.step: event.value for event in events.Scalars("eval/dice")}
    assert sorted(dice) == [0, 2, 3]
    assert f"step 0 (test): mean Dice {dice[0]:.4f}" in log
    assert sorted(event.step for event in events.Scalars("train/loss")) == [1, 2, 3]


def test_both_progress_bars_have_totals_on_a_terminal(tiny_sam_dir, dataset_cache, tmp_path, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(quick_training(tiny_sam_dir, dataset_cache, tmp_path, max_steps=2, num_workers=0))
    bars = terminal.getvalue()
    assert "training: 100%" in bars and "2/2 [" in bars
    assert "evaluating:" in bars and "/16 [" in bars  # of the 16 examples of the test split


def test_resuming_with_other_adapter_options_is_a_one_line_error_before_the_run(run_logged_to_a_file, tiny_sam_dir):
    output_dir, _ = run_logged_to_a_file
    resume = ["--model", tiny_sam_dir, "--output_dir", str(output_dir), "--resume", "latest"]
    result = subprocess.run(
        [sys.executable, TRAIN_SCRIPT, *resume, "--bottleneck_ratio", "0.5", "--volume_depth", "2"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    ours = [line for line in result.stderr.splitlines() if "train.py" in line or "Traceback" in line]
    assert len(ours) == 1 and ours[0].startswith("train.py: error: --resume_from_checkpoint/--resume latest: "), ours
    differences = [
        "--bottleneck_ratio 0.25 in the checkpoint, 0.5 now",
        "--volume_depth: the depth adapter is off in the checkpoint, on now",
    ]
    assert f"step-000002 was trained with other adapter options: {'; '.join(differences)}." in ours[0]
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == ["step-000002"]  # nothing ran
