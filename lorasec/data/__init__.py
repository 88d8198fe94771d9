"""Data: the synthetic task, text files, the pinned real sets and weights (``fetch``), tokenizers."""
