"""`MedSAConfig`: the PEFT configuration of the Medical SAM Adapter (Med-SA)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

__all__ = [
    "MedSAConfig",
    "MedSAPeftType",
]


class MedSAPeftType(str, enum.Enum):
    """Med-SA's PEFT type, shaped like a member of PEFT's closed `PeftType` enum.

    PEFT reads `.value` and `str(peft_type)` ("MedSAPeftType.MEDSA", e.g. `get_model_status`, `PeftMixedModel`) and
    compares with or looks up by the plain string "MEDSA" (adapter_config.json, its mapping tables): a `str` enum
    member whose name equals its value hashes and compares as that string, so it serves both.
    """

    MEDSA = "MEDSA"


MEDSA_PEFT_TYPE = MedSAPeftType.MEDSA

# Every image-encoder layer (SAM and SAM-HQ ViT: `layers`, SAM 2 Hiera: `backbone.blocks`) and every two-way block
# of the mask decoder, as transformers names them in the SAM family.
VISION_LAYERS_PATTERN = r".*vision_encoder\.(?:layers|backbone\.blocks)\.\d+"
DECODER_LAYERS_PATTERN = r".*mask_decoder\.transformer\.layers\.\d+"


@dataclass
class MedSAConfig(PeftConfig):
    """Configuration of Med-SA adapters on a transformers `SamModel`, `SamHQModel` or `Sam2Model` (docs/design.md).

    Image encoder, in every ViT layer or Hiera block: a Space adapter after the attention, an MLP adapter parallel
    to the MLP (scaled by `mlp_adapter_scale`) and, with `depth_adapter=True`, the SD-Trans depth branch that
    attends over the slices of a volume. Mask decoder, in every two-way block: HyP-Adpt (weights generated
    from the prompt embedding), an MLP adapter on the queries and an adapter on the keys after the
    image-to-token cross attention.

    Args:
        bottleneck_ratio: adapter hidden width as a fraction of the width it adapts (`round(C * ratio)`).
        mlp_adapter_scale: `s` in `x + MLP(n) + s * MLPAdapter(n)`.
        space_adapter, mlp_adapter, depth_adapter: image-encoder adapters to add.
        hyper_adapter, decoder_mlp_adapter, decoder_key_adapter: mask-decoder adapters to add.
        hyper_dim: `k`, the width of HyP-Adpt's generated `k x k` weight.
        activation: "gelu" (the authors' code) or "relu" (the paper's text).
        init: "zero" (last layer of every adapter zero: a fresh model computes exactly what SAM computes)
            or "official" (torch's default initialisation everywhere, as the authors' code).
        target_modules: regex of the layers to wrap; by default derived from the switches above.
        modules_to_save: modules of SAM trained in full and saved with the adapter (e.g. ["mask_decoder"]).
        pad_windows_before_norm, decoder_block: where the authors' code computes differently from SAM, set by the
            converter so that their checkpoints run exactly; they describe the SAM the adapter was trained on and
            act on the model while the adapter is attached, also under `disable_adapter()`. Off for new adapters.
            `pad_windows_before_norm`: windowed layers pad the token grid before `layer_norm1`, so padding tokens
            enter attention as that norm's bias (SAM pads after it, with zeros); it matters only when the token
            grid is not a multiple of the window (1024 px: 64 tokens, windows of 14). `decoder_block="medsa-2024"`:
            the self-attention of every two-way block keeps its residual, and blocks after the first add the prompt
            positional embedding to the running queries first (the authors' code since January 2024).
    """

    bottleneck_ratio: float = field(default=0.25, metadata={"help": "Adapter width as a fraction of C."})
    mlp_adapter_scale: float = field(default=0.5, metadata={"help": "Scale s of the MLP adapters."})
    space_adapter: bool = field(default=True, metadata={"help": "Space adapter in every encoder layer."})
    mlp_adapter: bool = field(default=True, metadata={"help": "MLP adapter in every encoder layer."})
    depth_adapter: bool = field(default=False, metadata={"help": "SD-Trans depth branch (3D volumes)."})
    hyper_adapter: bool = field(default=True, metadata={"help": "HyP-Adpt in every mask-decoder block."})
    decoder_mlp_adapter: bool = field(default=True, metadata={"help": "MLP adapter on the decoder queries."})
    decoder_key_adapter: bool = field(
        default=True, metadata={"help": "Adapter on the decoder keys after the image-to-token attention."}
    )
    hyper_dim: int = field(default=32, metadata={"help": "k of HyP-Adpt's generated k x k weight."})
    activation: Literal["gelu", "relu"] = field(default="gelu", metadata={"help": "Adapter activation."})
    init: Literal["zero", "official"] = field(default="zero", metadata={"help": "Adapter initialisation."})
    pad_windows_before_norm: bool = field(
        default=False,
        metadata={"help": "Pad attention windows before layer_norm1, as the authors' code (converted checkpoints)."},
    )
    decoder_block: Literal["sam", "medsa-2024"] = field(
        default="sam",
        metadata={"help": "Two-way block variant: SAM's, or the authors' code since 2024 (converted checkpoints)."},
    )
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Regex of the SAM layers to wrap; derived from the switches if None."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Layers not to wrap (regex or list of name suffixes)."}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "SAM modules trained in full and saved with the adapter."}
    )
    # PEFT reads this field on every config without checking that it exists; Med-SA targets no parameters.
    target_parameters: Optional[list[str]] = field(default=None, metadata={"help": "Unused by Med-SA."})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = MEDSA_PEFT_TYPE
        if not 0 < self.bottleneck_ratio <= 4:
            raise ValueError(f"bottleneck_ratio must be in (0, 4], got {self.bottleneck_ratio}.")
        if self.hyper_dim < 1:
            raise ValueError(f"hyper_dim must be at least 1, got {self.hyper_dim}.")
        if self.activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {self.activation!r}.")
        if self.init not in ("zero", "official"):
            raise ValueError(f"init must be 'zero' or 'official', got {self.init!r}.")
        if self.decoder_block not in ("sam", "medsa-2024"):
            raise ValueError(f"decoder_block must be 'sam' or 'medsa-2024', got {self.decoder_block!r}.")
        if self.pad_windows_before_norm and not self.encoder_adapters:
            raise ValueError("pad_windows_before_norm acts in the image-encoder layers: enable an encoder adapter.")
        if self.target_parameters:
            raise ValueError("Med-SA wraps whole SAM layers; target_parameters is not supported.")
        if not (self.encoder_adapters or self.decoder_adapters):
            raise ValueError("MedSAConfig switches every adapter off: enable at least one.")
        if self.decoder_adapters and "mask_decoder" in (self.modules_to_save or []):
            raise ValueError(
                "modules_to_save=['mask_decoder'] trains the whole decoder; switch the decoder adapters off "
                "(hyper_adapter, decoder_mlp_adapter, decoder_key_adapter) or keep the decoder frozen."
            )
        if self.target_modules is None:
            patterns = []
            if self.encoder_adapters:
                patterns.append(VISION_LAYERS_PATTERN)
            if self.decoder_adapters:
                patterns.append(DECODER_LAYERS_PATTERN)
            self.target_modules = "|".join(patterns)

    @property
    def encoder_adapters(self) -> bool:
        return self.space_adapter or self.mlp_adapter or self.depth_adapter

    @property
    def decoder_adapters(self) -> bool:
        return self.hyper_adapter or self.decoder_mlp_adapter or self.decoder_key_adapter

    @classmethod
    def official(cls, depth_adapter: bool = False, **kwargs) -> MedSAConfig:
        """The configuration of the authors' code: encoder adapters only (space, MLP and, for 3D, depth),
        GELU, torch's default initialisation, and the whole mask decoder trained."""
        settings = dict(
            space_adapter=True,
            mlp_adapter=True,
            depth_adapter=depth_adapter,
            hyper_adapter=False,
            decoder_mlp_adapter=False,
            decoder_key_adapter=False,
            activation="gelu",
            init="official",
            modules_to_save=["mask_decoder"],
        )
        settings.update(kwargs)
        return cls(**settings)
