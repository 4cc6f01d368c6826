"""Dice after 1, 3 and 5 clicks of SAM's iterative protocol (`medsa_peft.evaluation.scoring.evaluate_interactive`):
an adapter and the SAM it adapts (the adapter switched off), side by side, on a data set's held-out split.

    accelerate launch examples/train.py                                  # the demo adapter: outputs/medsa-demo
    python scripts/evaluate_clicks.py --adapter outputs/medsa-demo/adapter
    python scripts/evaluate_clicks.py --adapter runs/btcv/adapter --model facebook/sam-vit-base --dataset btcv \
        --data_dir ~/data/BTCV --volume_depth 8 --device cuda

The defaults are the demo's: the embedded MNI152 MRI test slices and their white matter (`--dataset mni152
--dataset_config 2d`; both tissues: `--classes '{"grey_matter": [1], "white_matter": [2]}'`) and the shipped tiny
SAM when the adapter names no base model. Prints one Markdown table row per model and click count.
"""

from __future__ import annotations

import argparse

import medsa_peft  # noqa: F401  (registers the MEDSA PEFT type)
from medsa_peft.data.builders import prepare_dataset
from medsa_peft.data.preprocess import SamFrame
from medsa_peft.evaluation.scoring import evaluate_interactive
from medsa_peft.inference.predictor import load_medsa_model
from medsa_peft.tiny_sam import default_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="Med-SA adapter folder or Hub repo id")
    parser.add_argument("--model", help="SamModel folder or Hub id (default: the adapter's base, else the tiny SAM)")
    parser.add_argument("--dataset", default="mni152", help="as examples/train.py's --dataset")
    parser.add_argument("--dataset_config", default="2d", help="builder config (mni152: 2d or 3d)")
    parser.add_argument("--data_dir", help="the manual download of a builder's data set")
    parser.add_argument("--classes", help="classes as JSON, as examples/train.py's --classes (default: the data's)")
    parser.add_argument("--clicks", type=int, nargs="+", default=[1, 3, 5], help="click counts to score")
    parser.add_argument("--volume_depth", type=int, default=1, help="chunk depth of a depth (SD-Trans) adapter")
    parser.add_argument("--max_cases", type=int, help="cap on (example, class) cases")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first clicks and of click ties")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--no_input_masks", action="store_true", help="give SAM all clicks so far but not its previous logits"
    )
    args = parser.parse_args()

    data = prepare_dataset(args.dataset, args.dataset_config, args.data_dir, classes=args.classes)
    try:
        model = load_medsa_model(args.adapter, args.model, device=args.device)
    except ValueError:  # the demo's adapters name no base: they adapt the shipped tiny SAM
        if args.model is not None:
            raise
        model = load_medsa_model(args.adapter, default_model_path(), device=args.device)
    frame = SamFrame.from_config(model.get_base_model().config)
    depth = args.volume_depth if args.volume_depth > 1 else None

    def scores() -> dict:
        return evaluate_interactive(
            model, data.evaluation, data.classes, data.modality, frame, args.clicks, depth=depth,
            max_cases=args.max_cases, seed=args.seed, input_masks=not args.no_input_masks,
        )

    with model.disable_adapter():
        untrained = scores()
    adapted = scores()
    classes = list(data.classes)
    fed_back = "without" if args.no_input_masks else "with"
    print(f"{data.name} ({data.evaluation_split}), Dice after n clicks ({fed_back} input_masks), mean over volumes\n")
    print("| model | clicks | " + " | ".join(classes) + " | mean |")
    print("|---|---:|" + "---:|" * (len(classes) + 1))
    adapter = f"SAM + {model.active_peft_config.peft_type.value} adapter"  # MEDSA or LORA
    for name, evaluations in (("SAM (adapter off)", untrained), (adapter, adapted)):
        for count, evaluation in evaluations.items():
            values = [evaluation.summary[f"dice/{name_}"] for name_ in classes] + [evaluation.summary["dice"]]
            print(f"| {name} | {count} | " + " | ".join(f"{value:.4f}" for value in values) + " |")


if __name__ == "__main__":
    main()
