"""lorasec: theory and simulation of low-rank adaptation under training-time attacks, in JAX.

Stages are plain functions (see README's architecture section): ``lorasec.config`` (typed configs),
``lorasec.run`` (one run end to end), ``lorasec.kernel`` / ``fisher`` / ``information`` (NTK and Fisher),
``lorasec.spectral`` and ``lorasec.threshold`` (paper 2's measures), ``lorasec.claims`` (the verify registry).
Nothing is imported or computed at import time beyond this docstring.
"""

__version__ = "0.1.0"
