"""The bottom layer: errors, file writing, seed statistics, the random-key tree and the claim registry.

Nothing here imports another part of lorasec.
"""
