"""Commands around the engine: the demo phantom run (``demo``), the installation check (``doctor``) and the speed
benchmark (``benchmark``)."""
