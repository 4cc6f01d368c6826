"""Med-SA (Medical SAM Adapter) as a PEFT method for transformers SamModel."""
