"""What the frozen base's embedding is (`model.ink`, `model.pooled_layers`), without TensorFlow.

The embed stage records it in metrics/embed.json; the stages and commands that build the embedder
again (`package`, `sigpipe enrol`) build it from params.yaml and refuse when the two differ, since a
verifier fitted on one embedding scores nonsense on another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from tasks.workspace.params_model import ModelParams

INKS: tuple[Literal["bright", "dark"], ...] = ("bright", "dark")  # model.ink's values
# Output channels of each InceptionV3 block (Keras' `mixed0` .. `mixed10`; a test checks them against Keras).
BLOCK_CHANNELS = {
    "mixed0": 256,
    "mixed1": 288,
    "mixed2": 288,
    "mixed3": 768,
    "mixed4": 768,
    "mixed5": 768,
    "mixed6": 768,
    "mixed7": 768,
    "mixed8": 1280,
    "mixed9": 2048,
    "mixed10": 2048,
}


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which way round the ink is fed to the base, and which InceptionV3 blocks are pooled, in order."""

    ink: Literal["bright", "dark"]
    pooled_layers: tuple[str, ...]

    @classmethod
    def of(cls, model: ModelParams) -> EmbeddingSpec:
        """The embedding `params.yaml`'s `model` group describes."""
        return cls(model.ink, tuple(model.pooled_layers))

    @classmethod
    def from_dict(cls, recorded: Mapping[str, object]) -> EmbeddingSpec:
        """The embedding `as_dict` wrote (metrics/embed.json); ValueError when it is not one."""
        ink, layers = recorded["ink"], recorded["pooled_layers"]
        if ink not in INKS or not isinstance(layers, list) or not set(layers) <= set(BLOCK_CHANNELS):
            raise ValueError(f"not an embedding: {dict(recorded)}")
        return cls(ink, tuple(str(layer) for layer in layers))

    @property
    def width(self) -> int:
        """How many features the embedding has: the pooled blocks' channels, summed."""
        return sum(BLOCK_CHANNELS[layer] for layer in self.pooled_layers)

    @property
    def label(self) -> str:
        """How tables and bench rows name it: the ink, then the pooled blocks joined by '+'."""
        return f"{self.ink} {'+'.join(self.pooled_layers)}"

    def as_dict(self) -> dict[str, object]:
        """The form recorded in metrics/embed.json and compared by the stages that rebuild the embedder."""
        return {"ink": self.ink, "pooled_layers": list(self.pooled_layers)}
