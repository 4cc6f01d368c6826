"""Train a Med-SA adapter on SAM with Accelerate.

    accelerate launch examples/train.py                      # offline demo: embedded MNI152 MRI, tiny SAM, CPU
    accelerate launch --mixed_precision bf16 examples/train.py --model_name_or_path facebook/sam-vit-base \
        --dataset btcv --data_dir ~/BTCV --volume_depth 8

Every option: `python examples/train.py --help`. The logic lives in `medsa_peft.training`.
"""

import logging
import sys

from transformers import HfArgumentParser

from medsa_peft.training import MedSATrainingArguments

if __name__ == "__main__":
    logging.basicConfig(format="%(message)s", stream=sys.stdout)  # other libraries: warnings only
    logging.getLogger("medsa_peft").setLevel(logging.INFO)
    parser = HfArgumentParser(MedSATrainingArguments)
    try:
        (arguments,) = parser.parse_args_into_dataclasses()
    except ValueError as error:  # an option the dataclass refused: one line and exit 2, as argparse does
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    from medsa_peft.training import train  # torch, peft, datasets: after parsing, so that --help answers at once

    train(arguments)  # errors of the run itself keep their traceback
