"""What the frozen base's embedding is (`model.ink`, `model.pooled_layers`), without TensorFlow.

The embed stage records it in metrics/embed.json; the stages and commands that build the embedder
again (`package`, `sigpipe enrol`) build it from params.yaml and refuse when the two differ, since a
verifier fitted on one embedding scores nonsense on another.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.workspace.params_model import ModelParams


@dataclass(frozen=True)
class EmbeddingSpec:
    """Which way round the ink is fed to the base, and which InceptionV3 blocks are pooled, in order."""

    ink: str
    pooled_layers: tuple[str, ...]

    @classmethod
    def of(cls, model: ModelParams) -> EmbeddingSpec:
        """The embedding `params.yaml`'s `model` group describes."""
        return cls(model.ink, tuple(model.pooled_layers))

    def as_dict(self) -> dict[str, object]:
        """The form recorded in metrics/embed.json and compared by the stages that rebuild the embedder."""
        return {"ink": self.ink, "pooled_layers": list(self.pooled_layers)}
