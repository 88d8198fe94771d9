"""Adapters around a model's linear layers: LoRA, rsLoRA, PiSSA, DoRA and RoRA's parts (``lora``, ``rora``)."""
