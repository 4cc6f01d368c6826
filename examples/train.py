"""Train a Med-SA adapter on SAM with Accelerate.

    accelerate launch examples/train.py                      # offline demo: embedded MNI152 MRI, tiny SAM, CPU
    accelerate launch --mixed_precision bf16 examples/train.py --model facebook/sam-vit-base \
        --dataset btcv --data_dir ~/BTCV --volume_depth 8

Every option: `python examples/train.py --help`. The logic lives in `medsa_peft.training`.
"""

from transformers import HfArgumentParser

from medsa_peft.training import TrainingArguments, train

if __name__ == "__main__":
    (arguments,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses()
    train(arguments)
