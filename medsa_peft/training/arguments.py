"""The options of a Med-SA training run (`examples/train.py`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..constants import EMBEDDED_DEFAULT

if TYPE_CHECKING:
    from ..data.builders import PreparedDataset
    from ..tuner.config import MedSAConfig

__all__ = ["DEFAULT_MAX_STEPS", "LR_SCHEDULERS", "METHODS", "MedSATrainingArguments"]

DEFAULT_MAX_STEPS = 600  # without --max_steps and --num_train_epochs
# transformers' `get_scheduler` types that need no option beyond the warm-up and the number of steps
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
# what trains (medsa_peft.training.methods): Med-SA adapters, PEFT LoRA, SAM's mask decoder, every weight of SAM
METHODS = ("medsa", "lora", "decoder", "full")
@dataclass
class MedSATrainingArguments:
    """Options of `examples/train.py` (each is a `--flag`); the defaults run the offline demo.

    Named apart from transformers' `TrainingArguments`, which drives its `Trainer`, not this loop. Options carry
    the names of transformers' no_trainer example scripts; the former names stay accepted on the command line
    (`--model`, `--batch_size`, `--eval_batch_size`, `--resume`, `--save_every`).
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "aliases": ["--model"],
            "help": "SAM to adapt: a Hub id or a folder of a SAM, SAM-HQ or SAM 2 (loaded as its config's class); "
            "None: the tiny SAM shipped offline",
        },
    )
    dataset: str = field(
        default=EMBEDDED_DEFAULT,
        metadata={
            "help": "mni152, btcv, brats, refuge, isic, thyroid, a local folder in the MSD / nnU-Net v1, "
            "nnU-Net v2 or images/ + masks/ layout, a Hub data set id user/name, or a parquet export, parquet file "
            "or save_to_disk folder (docs/data.md, 'Your own data')"
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "builder config; mni152 picks '2d' or '3d' from --volume_depth"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "manual download of the data set"})
    cache_dir: str | None = field(default=None, metadata={"help": "where `datasets` prepares the data set"})
    channel: str = field(
        default="0",
        metadata={
            "help": "folder data: the channel fed to SAM, by index (nnU-Net _0000, _0001...; MSD 4D images) or by "
            "its name in dataset.json ('modality' / 'channel_names', e.g. T1Gd)"
        },
    )
    modality: str | None = field(
        default=None,
        metadata={"help": "intensity rule: ct, mri, fundus, dermoscopy, ultrasound or photo; default: the data's own"},
    )
    classes: str | None = field(
        default=None,
        metadata={"help": 'classes as JSON, like \'{"liver": [1], "tumour": [2]}\'; default: the data\'s own'},
    )
    validation_fraction: float = field(
        default=0.2,
        metadata={"help": "folder data without a labelled test split: share of cases held out (seeded by --seed)"},
    )
    volume_depth: int = field(default=1, metadata={"help": "slices per volume chunk; > 1 turns on SD-Trans"})
    prompt: str = field(
        default="points:3",
        metadata={"help": "'box', 'box:IOU', 'points:K' or 'points:K+NEG' (positive+negative clicks)"},
    )
    official: bool = field(default=False, metadata={"help": "MedSAConfig.official(): the authors' configuration"})
    bottleneck_ratio: float = field(default=0.25, metadata={"help": "adapter bottleneck width / model width"})
    mlp_adapter_scale: float = field(default=0.5, metadata={"help": "scale of the MLP-parallel adapter"})
    activation: str = field(default="gelu", metadata={"help": "activation inside the adapters"})
    init: str = field(default="zero", metadata={"help": "adapter initialisation ('zero': start as SAM)"})
    hyper_dim: int = field(default=32, metadata={"help": "width of the hyper-adapter (depth) projections"})
    hyper_adapter: bool = field(
        default=True, metadata={"help": "HyP-Adpt in the mask decoder (--no_hyper_adapter: without it)"}
    )
    method: str = field(
        default="medsa",
        metadata={
            "choices": METHODS,
            "help": "what trains: Med-SA adapters, LoRA (peft), the mask decoder alone, or every weight (full)",
        },
    )
    lora_rank: int = field(default=16, metadata={"help": "--method lora: the rank r"})
    lora_alpha: float | None = field(default=None, metadata={"help": "--method lora: alpha (scale alpha/r); None: r"})
    lora_target_modules: str = field(
        default=r".*vision_encoder\.(layers|backbone\.blocks)\.\d+\.attn\.qkv",
        metadata={
            "help": "--method lora: regex of the linear layers LoRA adapts (PEFT's target_modules); by default the "
            "attention qkv of every image-encoder block: SAM's and SAM-HQ's ViT layers, SAM 2's Hiera blocks"
        },
    )
    lora_modules_to_save: str | None = field(
        default=None,
        metadata={"help": "--method lora: SAM modules trained in full beside LoRA, comma-separated (e.g. mask_decoder)"},
    )
    output_dir: str = field(
        default="outputs/medsa-demo", metadata={"help": "where results, checkpoints and logs are written"}
    )
    max_steps: int | None = field(
        default=None,
        metadata={"help": f"optimiser steps; wins over --num_train_epochs; without either: {DEFAULT_MAX_STEPS}"},
    )
    num_train_epochs: float | None = field(
        default=None,
        metadata={"help": "passes over the training samples, turned into steps when --max_steps is not given"},
    )
    per_device_train_batch_size: int = field(
        default=4,
        metadata={"aliases": ["--batch_size"], "help": "training samples per process and forward pass"},
    )
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "forward/backward passes per optimiser step"})
    learning_rate: float = field(default=5e-3, metadata={"help": "AdamW's peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW's weight decay"})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={
            "choices": LR_SCHEDULERS,
            "help": "learning-rate schedule after the warm-up (transformers' get_scheduler)",
        },
    )
    warmup_steps: int = field(default=20, metadata={"help": "optimiser steps of linear learning-rate warm-up"})
    eval_every: int = field(default=100, metadata={"help": "evaluate every N optimiser steps (0: only at the ends)"})
    checkpointing_steps: int = field(
        default=100,
        metadata={"aliases": ["--save_every"], "help": "checkpoint every N optimiser steps (0: never)"},
    )
    per_device_eval_batch_size: int = field(
        default=8, metadata={"aliases": ["--eval_batch_size"], "help": "slices per evaluation forward pass"}
    )
    max_eval_cases: int | None = field(default=None, metadata={"help": "cap on (volume, class) evaluation cases"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing per layer"})
    fused_attention: bool = field(
        default=True,
        metadata={
            "help": "SAM's attention without its (HW x HW) bias (--no_fused_attention: SAM's own); SAM 2's Hiera has "
            "no such bias and keeps its attention"
        },
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder layers, decoder side"})
    correction_clicks: int = field(
        default=0,
        metadata={
            "help": "SAM's iterative training: after the sampled prompt, N rounds each adding one click per slice on "
            "the error of the previous prediction, the loss averaged over all passes (docs/training.md); 0: off"
        },
    )
    correction_input_masks: bool = field(
        default=True,
        metadata={
            "help": "--correction_clicks: feed each round the previous low-resolution logits as input_masks "
            "(--no_correction_input_masks: clicks only)"
        },
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"aliases": ["--resume"], "help": "'latest' or a checkpoint folder"}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "upload the adapter to the Hub when training ends"})
    hub_model_id: str | None = field(default=None, metadata={"help": "the Hub repository of --push_to_hub: user/name"})
    report_to: str = field(
        default="auto", metadata={"help": "'tensorboard', 'none' or 'auto' (tensorboard if installed)"}
    )
    num_workers: int | None = field(
        default=None,
        metadata={"help": "DataLoader workers; default: this machine's cores per process, less one, at most 8"},
    )
    logging_steps: int = field(
        default=10, metadata={"help": "read and log the loss, and check it is finite, every N optimiser steps"}
    )
    seed: int = field(default=0, metadata={"help": "training seed: torch, numpy and Python (samples, prompts, init)"})
    eval_seed: int = field(
        default=0,
        metadata={"help": "seed of the evaluation prompts and the held-out split: the same for every --seed"},
    )
    def __post_init__(self) -> None:
        if self.volume_depth < 1:
            raise ValueError(f"--volume_depth must be at least 1, got {self.volume_depth}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max_steps must be at least 1, got {self.max_steps}")
        if self.num_train_epochs is not None and self.num_train_epochs <= 0:
            raise ValueError(f"--num_train_epochs must be above 0, got {self.num_train_epochs}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{_option(name)} must be at least 1, got {getattr(self, name)}")
        for name, meaning in (("checkpointing_steps", "never"), ("eval_every", "only at the start and end")):
            if getattr(self, name) < 0:
                raise ValueError(f"{_option(name)} must be at least 0 (0: {meaning}), got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"--warmup_steps must be at least 0, got {self.warmup_steps}")
        if self.lr_scheduler_type not in LR_SCHEDULERS:
            choices = ", ".join(LR_SCHEDULERS)
            raise ValueError(f"--lr_scheduler_type must be one of {choices}, got {self.lr_scheduler_type!r}")
        if self.model_name_or_path is not None:
            _check_model_source(self.model_name_or_path)
        if self.logging_steps < 1:
            raise ValueError(f"--logging_steps must be at least 1, got {self.logging_steps}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"--num_workers must be at least 0, got {self.num_workers}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id user/name")
        if self.channel.strip().startswith("-"):
            raise ValueError(f"--channel must be an index of at least 0 or a channel name, got {self.channel}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must lie between 0 and 1, got {self.validation_fraction}")
        # imported here, not at the top, so that `--help` builds the parser without torch or `datasets`
        from datasets_scripts.folder import canonical_modality, parse_classes

        from ..data.prompts import PromptSpec

        if self.classes is not None:
            parse_classes(self.classes)  # fail early on bad JSON
        if self.modality is not None:
            canonical_modality(self.modality)
        PromptSpec.parse(self.prompt)  # fail early on a bad prompt
        if self.method not in METHODS:
            raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "medsa" and self.volume_depth > 1:
            raise ValueError(f"--volume_depth above 1 needs --method medsa (SD-Trans is Med-SA's), got {self.method}")
        if self.lora_rank < 1:
            raise ValueError(f"--lora_rank must be at least 1, got {self.lora_rank}")
        if self.correction_clicks < 0:
            raise ValueError(f"--correction_clicks must be at least 0 (0: off), got {self.correction_clicks}")
        if self.resume_from_checkpoint is not None:  # last: it reads the checkpoint
            _check_resume(self)

    def training_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the run: --max_steps, else --num_train_epochs of `steps_per_epoch`, else the default."""
        if self.max_steps is not None:
            return self.max_steps
        if self.num_train_epochs is not None:
            return max(1, math.ceil(self.num_train_epochs * steps_per_epoch))
        return DEFAULT_MAX_STEPS

    def medsa_config(self) -> MedSAConfig:
        from ..tuner.config import MedSAConfig  # peft: imported when a run starts, not for `--help`

        depth = self.volume_depth > 1
        if self.official:
            return MedSAConfig.official(depth_adapter=depth, bottleneck_ratio=self.bottleneck_ratio)
        return MedSAConfig(
            depth_adapter=depth,
            bottleneck_ratio=self.bottleneck_ratio,
            mlp_adapter_scale=self.mlp_adapter_scale,
            activation=self.activation,
            init=self.init,
            hyper_dim=self.hyper_dim,
            hyper_adapter=self.hyper_adapter,
        )

    def resolved_dataset_config(self) -> str | None:
        if self.dataset_config is None and self.dataset == EMBEDDED_DEFAULT:
            return "3d" if self.volume_depth > 1 else "2d"
        return self.dataset_config

    def prepared_dataset(self) -> PreparedDataset:
        """The data set these options name, prepared; a folder's held-out cases are drawn with `eval_seed`, so that
        runs of every training seed are scored on the same cases."""
        from ..data.builders import prepare_dataset  # datasets: not for `--help`

        return prepare_dataset(
            self.dataset,
            self.resolved_dataset_config(),
            self.data_dir,
            self.cache_dir,
            channel=self.channel,
            modality=self.modality,
            classes=self.classes,
            validation_fraction=self.validation_fraction,
            seed=self.eval_seed,
        )


def _check_model_source(source: str) -> None:
    """Refuse a `--model` that names neither a SAM folder on this machine nor a possible Hub id."""
    option = "--model_name_or_path/--model"
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            raise ValueError(
                f"{option} {source}: is a Med-SA adapter folder, not a SAM; segment with it through "
                "`medsa-peft predict --adapter`, or continue its run with --resume_from_checkpoint"
            )
        return
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(f"{option} {source}: the folder does not exist (nor is it a Hub id)") from None
    if path.exists() or source.startswith((".", "/", "~")):
        raise ValueError(f"{option} {source}: the folder does not exist (nor is it a Hub id)")


def _check_resume(args: MedSATrainingArguments) -> None:
    """Refuse, before the run, a checkpoint to resume that is missing or incomplete, or that trained other weights
    than `args` would (another method or adapter options)."""
    from .checkpoints import resolve_checkpoint, resume_conflicts, trainer_state  # torch: not for `--help`

    option = f"{_option('resume_from_checkpoint')} {args.resume_from_checkpoint}"
    try:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        conflicts = resume_conflicts(trainer_state(checkpoint), args)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{option}: {error}") from None
    if conflicts:
        raise ValueError(
            f"{option}: {checkpoint} was trained with other adapter options: {'; '.join(conflicts)}. "
            "Resume with the options it was started with, or train in another --output_dir"
        )


def _option(name: str) -> str:
    """The command-line spelling of field `name` with its former aliases: "--checkpointing_steps/--save_every"."""
    aliases = MedSATrainingArguments.__dataclass_fields__[name].metadata.get("aliases", [])
    return "/".join([f"--{name}", *aliases])
