"""The ways to adapt SAM that `examples/train.py --method` trains, all through the same loop, loss and evaluation.

    model = trainable_model(load_sam(...), args)   # what trains has requires_grad=True
    ...
    save_trained_model(model, output_dir / saved_model_folder(args.method), state_dict, base_model)

| `--method` | what trains | written to the run's folder |
|---|---|---|
| `medsa` | the Med-SA adapters of `args.medsa_config()` | `adapter/`: a PEFT adapter (peft_type MEDSA) |
| `lora` | PEFT LoRA on `--lora_target_modules` (+ `--lora_modules_to_save` in full) | `adapter/`: a PEFT LoRA adapter |
| `decoder` | SAM's mask decoder; the image and prompt encoders stay frozen | `model/`: the whole model |
| `full` | every weight of SAM | `model/`: the whole model |

Every method runs on each model `sam_models.load_sam` loads (SamModel, SamHQModel, Sam2Model); the default LoRA
targets are the qkv of both the ViT layers and the Hiera blocks. A fine-tuned decoder or SAM is saved whole, with
`save_pretrained`: it loads with `from_pretrained` of its class (or `load_sam`) and serves anywhere a SAM does (as
`--model_name_or_path`, `medsa-peft predict --model`, or the base model of an adapter), at the size of SAM; a
decoder-only state dict would need a loader of its own. The adapters are saved alone, as PEFT saves them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel

from .arguments import MedSATrainingArguments

__all__ = [
    "count_trainable",
    "lora_config",
    "method_config",
    "save_trained_model",
    "saved_model_folder",
    "trainable_model",
    "trains_unused_parameters",
]

ADAPTER_METHODS = ("medsa", "lora")  # PEFT methods: SAM frozen, an adapter saved alone


def lora_config(args: MedSATrainingArguments) -> LoraConfig:
    """PEFT's LoRA from the `--lora_*` options: rank, alpha (the rank by default: scale 1), the target regex and
    the modules trained in full beside it; no dropout, as Med-SA's adapters."""
    modules_to_save = [name.strip() for name in (args.lora_modules_to_save or "").split(",") if name.strip()]
    return LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_rank if args.lora_alpha is None else args.lora_alpha,
        lora_dropout=0.0,
        target_modules=args.lora_target_modules,
        modules_to_save=modules_to_save or None,
    )


def method_config(args: MedSATrainingArguments) -> PeftConfig | None:
    """The PEFT configuration of an adapter method (`MedSAConfig` or `LoraConfig`), None for `decoder` and `full`."""
    if args.method == "medsa":
        return args.medsa_config()
    if args.method == "lora":
        return lora_config(args)
    return None


def trainable_model(sam: PreTrainedModel, args: MedSATrainingArguments) -> torch.nn.Module:
    """`sam` made ready to train by `args.method`: a PeftModel for the adapter methods, else `sam` itself with only
    the mask decoder (`decoder`) or every parameter (`full`) requiring gradients. Raises ValueError when the LoRA
    targets match no layer of `sam`."""
    config = method_config(args)
    if config is not None:
        try:
            return get_peft_model(sam, config)
        except ValueError as error:  # PEFT: "Target modules ... not found in the base model"
            if args.method != "lora":
                raise
            raise ValueError(
                f"--lora_target_modules {args.lora_target_modules}: {str(error).splitlines()[0]}"
            ) from error
    sam.requires_grad_(args.method == "full")
    if args.method == "decoder":
        sam.mask_decoder.requires_grad_(True)
    return sam


def trains_unused_parameters(args: MedSATrainingArguments) -> bool:
    """Whether some trainable parameters get no gradient from the mask loss: those of SAM modules trained whole
    (the IoU head of the mask decoder, the prompt embeddings a prompt type leaves out). DistributedDataParallel must
    then look for them at every step (`find_unused_parameters`), or it stops at the second step."""
    config = method_config(args)
    return config is None or bool(config.modules_to_save)


def count_trainable(model: torch.nn.Module) -> int:
    """Number of parameters that train (each shared parameter once)."""
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def saved_model_folder(method: str) -> str:
    """The folder of the run's output that holds what trained: "adapter" (medsa, lora) or "model" (decoder, full)."""
    return "adapter" if method in ADAPTER_METHODS else "model"


def save_trained_model(
    model: torch.nn.Module,
    directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    base_model: str | None,
) -> Path:
    """Write what trained into `directory`: a PeftModel's adapter (`save_pretrained`, naming `base_model`, a Hub id
    or None for a local base), or a whole SAM model. `state_dict` is the full model's (Accelerate's
    `get_state_dict`, which gathers sharded weights). Returns `directory`."""
    directory = Path(directory)
    if isinstance(model, PeftModel):
        # "" for a local base: PEFT would write the folder's path on this machine in its place
        model.active_peft_config.base_model_name_or_path = base_model or ""
        model.save_pretrained(directory, state_dict=state_dict)
    else:  # transformers writes no path of this machine into config.json
        model.save_pretrained(directory, state_dict=state_dict)
    return directory
