"""Train a Med-SA adapter on SAM with Accelerate.

    accelerate launch examples/train.py                      # offline demo: embedded MNI152 MRI, tiny SAM, CPU
    accelerate launch --mixed_precision bf16 examples/train.py --model_name_or_path facebook/sam-vit-base \
        --dataset btcv --data_dir ~/BTCV --volume_depth 8

Every option: `python examples/train.py --help`. The logic lives in `medsa_peft.training`. A bad option, or bad data,
files or settings found by the run, end it with one line `train.py: error: ...` (exit 2 and 1); `accelerate launch
-q` keeps the launcher from adding its own traceback of the failed process.
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

    try:
        train(arguments)
    except (ValueError, OSError) as error:  # bad data, files or settings found by the run: one line, exit 1
        logging.getLogger("medsa_peft").debug("the run stopped", exc_info=True)
        parser.exit(1, f"{parser.prog}: error: {error}\n")
