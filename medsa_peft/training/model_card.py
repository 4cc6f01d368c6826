"""The model card (README.md) of what a run trained (an adapter, or SAM fine-tuned): data set, prompts, metrics."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from peft import PeftConfig

__all__ = [
    "build_model_card",
    "hub_model_id",
    "metrics_table",
]

CARD_METRICS = ("dice", "iou", "hd95")
# per training method (medsa_peft.training.methods): the card's title and what trained, on top of {base}
METHOD_TEXTS = {
    "medsa": (
        "Med-SA adapter for SAM",
        "A [Medical SAM Adapter](https://arxiv.org/abs/2304.12620) (Med-SA) trained with `medsa_peft` on top of\n"
        "{base}: SAM stays frozen, the adapters train.",
    ),
    "lora": (
        "LoRA adapter for SAM",
        "A LoRA adapter (PEFT) trained with `medsa_peft` on top of {base}: SAM stays frozen, low-rank updates of\n"
        "its layers train.",
    ),
    "decoder": (
        "SAM with a fine-tuned mask decoder",
        "The mask decoder of {base} fine-tuned with `medsa_peft`; the image and prompt encoders are unchanged.",
    ),
    "full": ("Fine-tuned SAM", "Every weight of {base} fine-tuned with `medsa_peft`."),
}


def hub_model_id(source: str) -> str | None:
    """`source` when it names a model on the Hub ("org/name", not a folder on this machine), else None: saved
    configs and cards never carry a path of the machine they were written on."""
    if os.path.exists(source) or source.startswith((".", "/", "~")) or source.count("/") != 1:
        return None
    return source


def _format(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def metrics_table(before: Mapping[str, float], after: Mapping[str, float], classes: list[str]) -> str:
    """A markdown table of Dice / IoU / HD95 per class, before and after training."""
    lines = ["| class | Dice before | Dice after | IoU after | HD95 after (mm) |", "|---|---|---|---|---|"]
    for name in [*classes, None]:
        key = "" if name is None else f"/{name}"
        label = "**mean**" if name is None else name
        lines.append(
            f"| {label} | {_format(before.get('dice' + key))} | {_format(after.get('dice' + key))} "
            f"| {_format(after.get('iou' + key))} | {_format(after.get('hd95' + key))} |"
        )
    return "\n".join(lines)


def build_model_card(
    base_model: str | None,
    dataset: str,
    dataset_config: str,
    evaluation_split: str,
    prompt: str,
    volume_depth: int,
    config: PeftConfig | None,
    before: Mapping[str, float],
    after: Mapping[str, float],
    classes: list[str],
    steps: int,
    method: str = "medsa",
    model_class: str = "SamModel",
) -> ModelCard:
    """A model card for what `medsa_peft` trained by `method` (an adapter of PEFT `config`, or a whole model for
    `config=None`) on a transformers `model_class` (SamModel, SamHQModel, Sam2Model), with the Hub's metadata:
    `base_model` (a Hub id, left out for a local base), the metrics and a model-index of the evaluation results
    after training."""
    name = f"{method}-{dataset.rsplit('/', 1)[-1]}-{dataset_config}"  # a Hub data set id's own name, no "/"
    results = [
        EvalResult(
            task_type="image-segmentation",
            dataset_type=dataset,
            dataset_name=dataset,
            dataset_config=dataset_config,
            dataset_split=evaluation_split,
            metric_type=metric,
            metric_name=f"mean {metric}" + (" (mm)" if metric == "hd95" else ""),
            metric_value=after[metric],
        )
        for metric in CARD_METRICS
        if after.get(metric) is not None and math.isfinite(after[metric])
    ]
    data = ModelCardData(
        model_name=name,
        library_name="transformers" if config is None else "peft",
        license="apache-2.0",
        base_model=base_model,
        datasets=[dataset] if "/" in dataset else None,  # only a Hub data set id names a data set on the Hub
        metrics=list(CARD_METRICS),
        tags=[
            *(["medsa", "medical-sam-adapter"] if method == "medsa" else []),
            "medical-image-segmentation",
            "segment-anything",
            *([] if config is None else ["peft"]),
        ],
        pipeline_tag="mask-generation",
        eval_results=results or None,
    )
    base_name = f"`{base_model}`" if base_model else "a local SAM"
    load_base = base_model or "<the SAM it was trained on>"
    title, summary = METHOD_TEXTS[method]
    if config is None:
        use = f'from transformers import {model_class}\n\nmodel = {model_class}.from_pretrained("<this repo or folder>")'
        configuration = ""
    else:
        use = (
            f"from peft import PeftModel\nfrom transformers import {model_class}\n\nmodel = PeftModel.from_pretrained("
            f'{model_class}.from_pretrained("{load_base}"), "<this repo or folder>")'
        )
        if method == "medsa":
            use = "import medsa_peft  # registers the MEDSA PEFT type: import it before loading\n" + use
        settings = {
            key: value
            for key, value in config.to_dict().items()
            if key not in ("auto_mapping", "revision", "base_model_name_or_path")
        }
        settings_json = json.dumps(settings, indent=2, sort_keys=True, default=str)
        configuration = f"## Configuration\n\n```json\n{settings_json}\n```"
    body = f"""---
{data.to_yaml()}
---

# {title} ({dataset}, {dataset_config})

{summary.format(base=base_name)}

- **Data set:** `{dataset}` (config `{dataset_config}`), evaluated on its `{evaluation_split}` split
- **Prompts:** `{prompt}` (training and evaluation), one per slice
- **Volumes:** {"2D images" if volume_depth == 1 else f"depth chunks of {volume_depth} slices through SD-Trans"}
- **Training steps:** {steps}

## Metrics ({evaluation_split} split, means over volumes)

{metrics_table(before, after, classes)}

## Use

```python
{use}
```

{configuration}
"""
    return ModelCard(body)
