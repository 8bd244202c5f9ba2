"""tunery: an open, self-hostable LoRA fine-tuning studio."""

__version__ = "0.1.0"
