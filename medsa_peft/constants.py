"""Names and defaults that the command lines' parsers need, in a module that imports nothing.

`medsa-peft --help` and `examples/train.py --help` build their parsers from these without importing torch;
the modules that work with each value re-export it (`data.preprocess.MODALITIES`, `io.DEFAULT_MAX_IMAGE_BYTES`...).
"""

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DTYPE_NAMES",
    "EMBEDDED_DEFAULT",
    "MODALITIES",
    "PHOTO",
    "PHOTO_MODALITIES",
]

PHOTO_MODALITIES = ("fundus", "dermoscopy", "ultrasound", "photo")  # 8-bit pictures: value / 255
MODALITIES = ("ct", "mri", *PHOTO_MODALITIES)
PHOTO = "photo"  # the modality of a picture that does not say otherwise
DTYPE_NAMES = ("float32", "bfloat16", "float16")  # torch dtypes the predictor runs in
# The most bytes an image may take once decoded; its header says how many before anything is allocated.
DEFAULT_MAX_IMAGE_BYTES = 4 * 1024**3
EMBEDDED_DEFAULT = "mni152"  # the data set shipped inside the package (the offline demo)
