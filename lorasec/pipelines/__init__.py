"""Pipelines: the only layer that reads and writes run directories, and draws (``figures``)."""
