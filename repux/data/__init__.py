"""Data: synthetic CT phantoms and training datasets."""
