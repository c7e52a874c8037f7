"""What the frozen base's embedding is (`model.ink`, `model.pooled_layers`), without TensorFlow.

The embed stage records it in metrics/embed.json; the stages and commands that build the embedder
again (`package`, `sigpipe enrol`) build it from params.yaml and refuse when the two differ, since a
verifier fitted on one embedding scores nonsense on another.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import get_args

from tasks.workspace.params_model import INCEPTION_BLOCK_CHANNELS, Ink, ModelParams

INKS: tuple[Ink, ...] = get_args(Ink)  # model.ink's values


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which way round the ink is fed to the base, and which InceptionV3 blocks are pooled, in order."""

    ink: Ink
    pooled_layers: tuple[str, ...]

    @classmethod
    def of(cls, model: ModelParams) -> EmbeddingSpec:
        """The embedding `params.yaml`'s `model` group describes."""
        return cls(model.ink, tuple(model.pooled_layers))

    @classmethod
    def from_dict(cls, recorded: Mapping[str, object]) -> EmbeddingSpec:
        """The embedding `as_dict` wrote (metrics/embed.json); ValueError when it is not one."""
        ink, layers = recorded["ink"], recorded["pooled_layers"]
        if ink not in INKS or not isinstance(layers, list) or not set(layers) <= set(INCEPTION_BLOCK_CHANNELS):
            raise ValueError(f"not an embedding: {dict(recorded)}")
        return cls(ink, tuple(str(layer) for layer in layers))

    @property
    def width(self) -> int:
        """How many features the embedding has: the pooled blocks' channels, summed."""
        return sum(INCEPTION_BLOCK_CHANNELS[layer] for layer in self.pooled_layers)

    @property
    def label(self) -> str:
        """How tables and bench rows name it: the ink, then the pooled blocks joined by '+'."""
        return f"{self.ink} {'+'.join(self.pooled_layers)}"

    def as_dict(self) -> dict[str, object]:
        """The form recorded in metrics/embed.json and compared by the stages that rebuild the embedder."""
        return {"ink": self.ink, "pooled_layers": list(self.pooled_layers)}
