"""Named model sizes. ``tiny`` trains on a laptop CPU; the Llama-shaped ones are for planning."""

from __future__ import annotations

from enum import StrEnum


class ModelPreset(StrEnum):
    TINY = "tiny"
    SMALL = "small"
    LLAMA_1B = "llama-1b"
    LLAMA_8B = "llama-8b"
    LLAMA_70B = "llama-70b"


#: Dimensions of each preset (Llama 3 shapes for the large ones).
PRESETS: dict[ModelPreset, dict[str, int]] = {
    ModelPreset.TINY: dict(vocab_size=64, dim=64, layers=2, heads=4, kv_heads=2, ffn_dim=176),
    ModelPreset.SMALL: dict(vocab_size=256, dim=256, layers=4, heads=8, kv_heads=4, ffn_dim=704),
    ModelPreset.LLAMA_1B: dict(
        vocab_size=128256, dim=2048, layers=16, heads=32, kv_heads=8, ffn_dim=8192
    ),
    ModelPreset.LLAMA_8B: dict(
        vocab_size=128256, dim=4096, layers=32, heads=32, kv_heads=8, ffn_dim=14336
    ),
    ModelPreset.LLAMA_70B: dict(
        vocab_size=128256, dim=8192, layers=80, heads=64, kv_heads=8, ffn_dim=28672
    ),
}
