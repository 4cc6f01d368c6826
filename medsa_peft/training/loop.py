"""Training Med-SA under Accelerate: the logic behind `accelerate launch examples/train.py`.

Mixed precision, several processes, GPUs and machines come from Accelerate (`accelerate launch
--mixed_precision bf16 --multi_gpu ...`); this module holds no process code of its own.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import datasets
import huggingface_hub
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs, DistributedType, set_seed
from huggingface_hub import HfApi
from tqdm.auto import tqdm
from transformers import Sam2Model, get_scheduler

from ..data import PromptSpec, SamFrame, SamTrainingSamples, collate_sam, sam_pixel_values
from ..data.samples import EpochSampler
from ..evaluation.scoring import evaluate_model
from ..files import write_json, write_png
from ..sam_models import load_sam
from ..tiny_sam import default_model_path
from ..tuner.fast_paths import compile_sam_layers, enable_activation_checkpointing, use_fused_attention
from .arguments import MedSATrainingArguments
from .checkpoints import (
    adapter_settings,
    keep_trainable_weights,
    load_checkpoint,
    remove_unfinished_saves,
    resolve_checkpoint,
    save_checkpoint,
)
from .interactive import CorrectionRounds
from .losses import DiceBCELoss
from .methods import (
    count_trainable,
    method_config,
    save_trained_model,
    saved_model_folder,
    trainable_model,
    trains_unused_parameters,
)
from .model_card import build_model_card, hub_model_id, metrics_table

__all__ = [
    "LossMonitor",
    "default_num_workers",
    "sam_inputs",
    "train",
    "train_loader",
]

logger = get_logger(__name__)

PROMPT_INPUTS = ("input_boxes", "input_points", "input_labels")
MAX_DEFAULT_WORKERS = 8
PREFETCH_BATCHES = 4  # per worker


def _trackers(report_to: str) -> list[str]:
    if report_to == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else []
    return [] if report_to == "none" else [report_to]


def _bars_only_on_a_terminal() -> None:
    """Without a terminal (output going to a log file), turn off the progress bars of datasets, transformers and
    huggingface_hub, whose carriage returns would fill the file; `train` logs progress lines there instead."""
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
        transformers.utils.logging.disable_progress_bar()
        huggingface_hub.utils.disable_progress_bars()


def default_num_workers(local_processes: int = 1) -> int:
    """DataLoader workers per training process: the CPU cores this process may run on, shared by the
    `local_processes` training processes of the machine, less one for the process itself, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(MAX_DEFAULT_WORKERS, cores // max(1, local_processes) - 1))


def train_loader(
    samples: torch.utils.data.Dataset, batch_size: int, num_workers: int, pin_memory: bool, seed: int = 0
) -> torch.utils.data.DataLoader:
    """The training DataLoader: `collate_sam` batches of the `EpochSampler` keys (every sample once per epoch, in
    an order drawn from `seed` and the epoch); with workers, kept alive across epochs and `PREFETCH_BATCHES`
    batches ahead each, so loading overlaps the model step; pinned memory for an accelerator (copies to it can
    then run asynchronously)."""
    workers = {"persistent_workers": True, "prefetch_factor": PREFETCH_BATCHES} if num_workers else {}
    return torch.utils.data.DataLoader(
        samples,
        batch_size=batch_size,
        sampler=EpochSampler(len(samples), seed),
        collate_fn=collate_sam,
        num_workers=num_workers,
        pin_memory=pin_memory,
        **workers,
    )


def sam_inputs(batch: dict, frame: SamFrame, depth: int | None) -> dict:
    """SamModel's inputs of a `collate_sam` batch on the device: pixel values framed there, prompts, `depth`."""
    inputs = {name: batch[name] for name in PROMPT_INPUTS if name in batch}
    inputs["pixel_values"] = sam_pixel_values(batch["images"], batch["image_sizes"], frame)
    if depth is not None:  # a 3D data set at --volume_depth 1 trains slice by slice, as 2D
        inputs["depth"] = depth
    return inputs


class LossMonitor:
    """The training loss kept on the device: a running sum for logging and the first non-finite value, so a step
    never waits for the device. `check` (at logging steps, before checkpoints and evaluations) reads them once
    and stops every process together when any saw a non-finite loss."""

    def __init__(self, device: torch.device):
        self.total = torch.zeros((), device=device)
        self.count = 0
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_bad_loss = torch.zeros((), device=device)

    def add(self, loss: torch.Tensor, step: int) -> None:
        """Record one micro-batch's loss of optimiser step `step` (0-based), without a host synchronisation."""
        loss = loss.detach().float()
        first = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(first, step, self.first_bad_step)
        self.first_bad_loss = torch.where(first, loss, self.first_bad_loss)
        self.total += loss
        self.count += 1

    def check(self, accelerator: Accelerator, step: int) -> None:
        """Raise FloatingPointError when a process saw a non-finite loss; all processes call it at the same steps."""
        bad = accelerator.gather(torch.stack([self.first_bad_step.float(), self.first_bad_loss]).reshape(1, 2))
        bad = bad[bad[:, 0] >= 0]
        if len(bad):
            first_step, loss = bad[bad[:, 0].argmin()].tolist()
            raise FloatingPointError(
                f"the loss became {loss} at step {int(first_step)}; training stopped at step {step}, before any "
                "checkpoint or adapter was written after it. Lower --learning_rate or check the data."
            )

    def mean(self) -> float:
        """The mean loss since the last call (reads the device), and a fresh sum."""
        mean = self.total.item() / max(1, self.count)
        self.total.zero_()
        self.count = 0
        return mean


def _check_replicas_agree(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """Assert the trainable weights are identical on every process (what DDP promises) before saving.

    Sharded runs (FSDP, DeepSpeed) hold different shards on each process by design: nothing to compare.
    """
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad]).sum()
    checksums = accelerator.gather(checksum.reshape(1).to(accelerator.device))
    if not torch.all(checksums == checksums[0]):
        raise RuntimeError(f"adapter weights differ between processes: checksums {checksums.tolist()}")
    logger.info(f"adapter weights identical on all {accelerator.num_processes} process(es)")


def _summary_line(title: str, summary: dict[str, float], classes: list[str]) -> str:
    per_class = ", ".join(f"{name} {summary.get(f'dice/{name}', float('nan')):.4f}" for name in classes)
    return f"{title}: mean Dice {summary['dice']:.4f} ({per_class})"


def _log_run_summary(
    num_samples: int,
    args: MedSATrainingArguments,
    num_processes: int,
    steps_per_epoch: int,
    max_steps: int,
) -> None:
    """The "Running training" summary of transformers' Trainer, through this module's logger (main process)."""
    total_batch = args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps
    lines = [
        "***** Running training *****",
        f"  Num samples = {num_samples:,}",
        f"  Num epochs = {max_steps / steps_per_epoch:.2f} ({steps_per_epoch:,} optimisation steps each)",
        f"  Batch size per device = {args.per_device_train_batch_size}",
        f"  Processes = {num_processes}",
        f"  Gradient accumulation steps = {args.gradient_accumulation_steps}",
        f"  Total train batch size (per device x processes x accumulation) = {total_batch:,}",
        f"  Total optimisation steps = {max_steps:,}",
    ]
    logger.info("\n".join(lines))


def train(args: MedSATrainingArguments) -> dict:
    """Train a Med-SA adapter as `args` says; returns the metrics written to `output_dir/metrics.json`."""
    _bars_only_on_a_terminal()
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=_trackers(args.report_to) or None,
        project_dir=args.output_dir,
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=trains_unused_parameters(args))],
    )
    set_seed(args.seed)
    output_dir = Path(args.output_dir)

    with accelerator.main_process_first():
        data = args.prepared_dataset()
    classes = list(data.classes)
    prompt = PromptSpec.parse(args.prompt)

    model_source = args.model_name_or_path or str(default_model_path())
    sam = load_sam(model_source)  # SamModel, SamHQModel or Sam2Model, by its config
    frame = SamFrame.from_config(sam.config)
    adapter = adapter_settings(method_config(args))  # before get_peft_model fills in PEFT's bookkeeping
    model = trainable_model(sam, args)
    trainable = count_trainable(model)
    logger.info(f"{args.method}: {trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters train")
    if args.gradient_checkpointing:
        enable_activation_checkpointing(model)  # transformers' switch refuses Sam2Model, whose blocks support it
    # it lives in Med-SA's ViT encoder layers; SAM 2's Hiera runs transformers' attention kernels already
    if args.fused_attention and args.method == "medsa" and not isinstance(sam, Sam2Model):
        use_fused_attention(model)
    if args.compile:
        compile_sam_layers(model)

    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    num_workers = default_num_workers(local_processes) if args.num_workers is None else args.num_workers
    with accelerator.main_process_first():  # the main process prepares the sample store, the others read it
        samples = SamTrainingSamples(
            data.train,
            data.classes,
            data.modality,
            frame,
            prompt,
            args.volume_depth,
            num_proc=num_workers + 1,
            seed=args.seed,
        )
    batch_size = args.per_device_train_batch_size
    loader = train_loader(samples, batch_size, num_workers, accelerator.device.type != "cpu", seed=args.seed)
    # Each process takes every num_processes-th batch (Accelerate evens the last round out); Accelerate also
    # steps at the end of the loader, so a last partial accumulation counts as a step.
    steps_per_epoch = math.ceil(
        math.ceil(len(samples) / (batch_size * accelerator.num_processes)) / args.gradient_accumulation_steps
    )
    max_steps = args.training_steps(steps_per_epoch)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.learning_rate, weight_decay=args.weight_decay
    )
    # Accelerate steps a prepared scheduler once per process for every optimiser step (batches are not split).
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=args.warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    accelerator.register_save_state_pre_hook(keep_trainable_weights)
    _log_run_summary(len(samples), args, accelerator.num_processes, steps_per_epoch, max_steps)
    loss_fn = DiceBCELoss()
    depth = args.volume_depth if args.volume_depth > 1 else None
    correction = (
        CorrectionRounds(args.correction_clicks, frame, args.correction_input_masks, args.seed)
        if args.correction_clicks
        else None
    )

    def evaluate(tag: str):
        # Every process runs the evaluation (a sharded FSDP model needs all of them for a forward); the main
        # process reports it.
        evaluation = evaluate_model(
            model,
            data.evaluation,
            data.classes,
            data.modality,
            frame,
            prompt,
            depth=depth,
            batch_size=args.per_device_eval_batch_size,
            max_cases=args.max_eval_cases,
            seed=args.eval_seed,
            progress=accelerator.is_main_process,
            axial_pictures=data.axial_pictures,
        )
        logger.info(_summary_line(f"{tag} ({data.evaluation_split})", evaluation.summary, classes))
        return evaluation

    accelerator.init_trackers("medsa", config={k: v for k, v in asdict(args).items() if v is not None})
    if accelerator.is_main_process:
        remove_unfinished_saves(output_dir)
    step, before = 0, None
    if args.resume_from_checkpoint:  # MedSATrainingArguments checked the checkpoint and its adapter settings
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
        state = load_checkpoint(accelerator, checkpoint)
        step, before = state["step"], state["metrics_before"]
        logger.info(f"resumed from {checkpoint} at step {step}")
        if state.get("seed", args.seed) != args.seed:
            logger.warning(
                f"{checkpoint} was trained with --seed {state['seed']}, this run has --seed {args.seed}: from here "
                "on the batches and prompts differ from those of the run it continues"
            )
    else:
        before = evaluate("step 0").summary
        accelerator.log({f"eval/{k}": v for k, v in before.items()}, step=0)

    # a bar on a terminal; in a log file (no terminal) a line at every logging step instead
    progress = tqdm(
        total=max_steps, initial=step, desc="training", disable=None if accelerator.is_main_process else True
    )
    losses = LossMonitor(accelerator.device)
    model.train()
    micro_batch = 0  # of the optimiser step: with the step, it seeds the correction clicks
    while step < max_steps:
        epoch, done_in_epoch = divmod(step, steps_per_epoch)
        loader.set_epoch(epoch)
        skip = done_in_epoch * args.gradient_accumulation_steps
        batches = loader
        if skip:  # resuming inside an epoch: a new loader, with new workers, that starts at the next batch
            batches = accelerator.skip_first_batches(loader, skip)
            batches.set_epoch(epoch)  # it would start from epoch 0 (accelerate 1.10 does not carry the epoch over)
        for batch in batches:
            with accelerator.accumulate(model):
                inputs = sam_inputs(batch, frame, depth)
                if correction is None:
                    loss = loss_fn(model(**inputs, multimask_output=False).pred_masks[:, 0, 0], batch["labels"])
                else:  # SAM's iterative protocol (training.interactive)
                    clicks = correction.generator(step, micro_batch, accelerator.process_index)
                    loss = correction.loss(model, inputs, batch, loss_fn, clicks)
                losses.add(loss, step)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro_batch += 1
            if not accelerator.sync_gradients:
                continue
            step, micro_batch = step + 1, 0
            progress.update(1)
            evaluating = args.eval_every and step % args.eval_every == 0 and step < max_steps
            saving = args.checkpointing_steps and step % args.checkpointing_steps == 0
            if step % args.logging_steps == 0 or evaluating or saving or step >= max_steps:
                losses.check(accelerator, step)  # before anything is written from these weights
                mean_loss, learning_rate = losses.mean(), scheduler.get_last_lr()[0]
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                if progress.disable:
                    logger.info(f"step {step}/{max_steps}: loss {mean_loss:.4f}, learning rate {learning_rate:.3g}")
                accelerator.log({"train/loss": mean_loss, "train/lr": learning_rate}, step=step)
            if evaluating:
                accelerator.log({f"eval/{k}": v for k, v in evaluate(f"step {step}").summary.items()}, step=step)
            if saving:
                # the step gives the epoch and the batches used in it; with the seed, the samples that come next
                state = {"step": step, "epoch": step // steps_per_epoch, "seed": args.seed, "method": args.method}
                save_checkpoint(accelerator, output_dir, {**state, "adapter": adapter, "metrics_before": before})
            if step >= max_steps:
                break
    progress.close()

    _check_replicas_agree(accelerator, model)
    evaluation = evaluate(f"step {step}")
    state_dict = accelerator.get_state_dict(model)  # gathers sharded (FSDP) weights; every process takes part
    metrics = {}
    if accelerator.is_main_process:
        after = evaluation.summary
        accelerator.log({f"eval/{k}": v for k, v in after.items()}, step=step)
        metrics = {
            "method": args.method,
            "trainable_parameters": trainable,
            "dataset": data.name,
            "dataset_config": data.config_name,
            "evaluation_split": data.evaluation_split,
            "prompt": str(prompt),
            "volume_depth": args.volume_depth,
            "steps": step,
            "before": before,
            "after": after,
        }
        write_json(metrics, output_dir / "metrics.json")
        if evaluation.overlay is not None:
            write_png(evaluation.overlay, output_dir / "overlay.png")
        adapter_dir = output_dir / saved_model_folder(args.method)
        save_trained_model(accelerator.unwrap_model(model), adapter_dir, state_dict, hub_model_id(model_source))
        card = build_model_card(
            hub_model_id(model_source),
            data.name,
            data.config_name,
            data.evaluation_split,
            str(prompt),
            args.volume_depth,
            method_config(args),
            before,
            after,
            classes,
            step,
            method=args.method,
            model_class=type(sam).__name__,
        )
        card.save(adapter_dir / "README.md")
        logger.info(metrics_table(before, after, classes))
        if args.push_to_hub:
            _push(adapter_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _push(adapter_dir: Path, repo_id: str) -> None:
    """Upload the adapter folder (weights, config, model card) as it was written."""
    api = HfApi()
    repo_id = api.create_repo(repo_id, exist_ok=True).repo_id
    api.upload_folder(repo_id=repo_id, folder_path=adapter_dir, commit_message="Upload Med-SA adapter")
    logger.info(f"pushed {adapter_dir.name} to the Hub as {repo_id}")
