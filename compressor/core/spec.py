"""The architecture of a (possibly pruned) ViT: which teacher blocks remain and how wide each is.

A spec is what `compression.json` stores and what the artifact loader replays on a fresh timm
model before loading the weights with `strict=True`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from vitshrink.compressor.core.errors import ArtifactError
from vitshrink.compressor.core.families import head_dim, mlp_hidden


@dataclass(frozen=True)
class BlockSpec:
    source_index: int  # index of this block in the unpruned teacher (for feature distillation)
    num_heads: int  # attention heads kept
    head_dim: int  # width of one head (never pruned)
    mlp_hidden: int  # MLP hidden neurons kept

    def to_dict(self) -> dict:
        return {
            "source_index": self.source_index,
            "num_heads": self.num_heads,
            "head_dim": self.head_dim,
            "mlp_hidden": self.mlp_hidden,
        }

    @classmethod
    def from_dict(cls, d: dict) -> BlockSpec:
        try:
            return cls(int(d["source_index"]), int(d["num_heads"]), int(d["head_dim"]), int(d["mlp_hidden"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(f"bad block spec {d!r}: {e}") from e


@dataclass(frozen=True)
class ArchSpec:
    embed_dim: int  # token width D (never pruned: the residual stream)
    blocks: tuple[BlockSpec, ...]

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict:
        return {"embed_dim": self.embed_dim, "blocks": [b.to_dict() for b in self.blocks]}

    @classmethod
    def from_dict(cls, d: dict) -> ArchSpec:
        try:
            return cls(int(d["embed_dim"]), tuple(BlockSpec.from_dict(b) for b in d["blocks"]))
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"bad architecture spec: missing {e}") from e

    @classmethod
    def from_model(cls, model: nn.Module, source_indices: list[int] | None = None) -> ArchSpec:
        """Read the spec off a supported timm ViT as it is now."""
        blocks = []
        for i, blk in enumerate(model.blocks):
            src = source_indices[i] if source_indices is not None else i
            blocks.append(
                BlockSpec(
                    source_index=src,
                    num_heads=blk.attn.num_heads,
                    head_dim=head_dim(blk.attn),
                    mlp_hidden=mlp_hidden(blk.mlp),
                )
            )
        return cls(embed_dim=model.embed_dim, blocks=tuple(blocks))

    def summary(self) -> str:
        """One line per block, e.g. `block 3 (teacher 4): 5 heads x 32, MLP 512`."""
        return "\n".join(
            f"block {i} (teacher {b.source_index}): {b.num_heads} heads x {b.head_dim}, MLP {b.mlp_hidden}"
            for i, b in enumerate(self.blocks)
        )
