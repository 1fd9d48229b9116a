"""Command-line interface of RepUX (``repux``, ``python -m repux``)."""
