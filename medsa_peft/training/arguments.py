"""The options of a Med-SA training run (`examples/train.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from datasets_scripts.folder import canonical_modality, parse_classes

from ..data.builders import EMBEDDED_DEFAULT
from ..data.prompts import PromptSpec
from ..tuner.config import MedSAConfig

__all__ = ["MedSATrainingArguments"]


@dataclass
class MedSATrainingArguments:
    """Options of `examples/train.py` (each is a `--flag`); the defaults run the offline demo.

    Named apart from transformers' `TrainingArguments`, which drives its `Trainer`, not this loop.
    """

    model: str | None = field(
        default=None, metadata={"help": "SAM to adapt: a Hub id or folder; default: the tiny SAM shipped offline"}
    )
    dataset: str = field(
        default=EMBEDDED_DEFAULT,
        metadata={
            "help": "mni152, btcv, brats, refuge, isic, thyroid, or a local folder in the MSD / nnU-Net v1, "
            "nnU-Net v2 or images/ + masks/ layout (docs/data.md, 'Your own data')"
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "builder config; mni152 picks '2d' or '3d' from --volume_depth"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "manual download of the data set"})
    cache_dir: str | None = field(default=None, metadata={"help": "where `datasets` prepares the data set"})
    channel: int = field(default=0, metadata={"help": "folder data: the channel (nnU-Net _0000, _0001...) fed to SAM"})
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
    bottleneck_ratio: float = 0.25
    mlp_adapter_scale: float = 0.5
    activation: str = "gelu"
    init: str = "zero"
    hyper_dim: int = 32
    output_dir: str = "outputs/medsa-demo"
    max_steps: int = 600
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    eval_every: int = field(default=100, metadata={"help": "evaluate every N optimiser steps (0: only at the ends)"})
    save_every: int = field(default=100, metadata={"help": "checkpoint every N optimiser steps (0: never)"})
    eval_batch_size: int = 8
    max_eval_cases: int | None = field(default=None, metadata={"help": "cap on (volume, class) evaluation cases"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "activation checkpointing per layer"})
    fused_attention: bool = field(
        default=True, metadata={"help": "SAM's attention without its (HW x HW) bias (--no_fused_attention: SAM's own)"}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder layers, decoder side"})
    resume: str | None = field(default=None, metadata={"help": "'latest' or a checkpoint folder"})
    push_to_hub: bool = False
    hub_model_id: str | None = None
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
    seed: int = 0

    def __post_init__(self):
        if self.volume_depth < 1:
            raise ValueError(f"--volume_depth must be at least 1, got {self.volume_depth}")
        if self.max_steps < 1:
            raise ValueError(f"--max_steps must be at least 1, got {self.max_steps}")
        if self.logging_steps < 1:
            raise ValueError(f"--logging_steps must be at least 1, got {self.logging_steps}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"--num_workers must be at least 0, got {self.num_workers}")
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id user/name")
        if self.channel < 0:
            raise ValueError(f"--channel must be at least 0, got {self.channel}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"--validation_fraction must lie between 0 and 1, got {self.validation_fraction}")
        if self.classes is not None:
            parse_classes(self.classes)  # fail early on bad JSON
        if self.modality is not None:
            canonical_modality(self.modality)
        PromptSpec.parse(self.prompt)  # fail early on a bad prompt

    def medsa_config(self) -> MedSAConfig:
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
        )

    def resolved_dataset_config(self) -> str | None:
        if self.dataset_config is None and self.dataset == EMBEDDED_DEFAULT:
            return "3d" if self.volume_depth > 1 else "2d"
        return self.dataset_config
