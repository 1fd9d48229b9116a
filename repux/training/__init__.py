"""Training, fine-tuning and evaluation engines (MONAI based)."""
