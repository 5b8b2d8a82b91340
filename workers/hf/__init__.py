"""Hugging Face Llama-family models in and out of the built-in transformer.

``config`` maps config.json to ``ModelConfig`` (pure, the operator reads it); ``weights``
maps tensors and reads/writes safetensors; ``export`` writes a model or a committed
checkpoint as a directory transformers loads. Import the module you need: this package
imports nothing, so the operator can use ``config`` without torch.
"""
