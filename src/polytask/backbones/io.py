"""What a backbone consumes and produces: the interface between inputs, backbones, architectures and heads.

A text encoder consumes token ids and produces token states ``(B, T, H)`` (a pooled vector is
taken from them by the task head). A vision backbone consumes pixels ``(B, 3, S, S)`` and produces
a pyramid of feature maps ``(B, C_j, H_j, W_j)``, one per stage; its last map, read as positions
``(B, H_L * W_L, C_L)`` with every position real, is what a task head pools (global average
pooling = the ``mean`` pooler), so the classification, multi-label and regression heads are the
same for text and images. Tasks declare which inputs they can read (``Task.reads``), architectures
which backbones they can share (``Architecture.refuses``); ``polytask check`` refuses a combination
that cannot work, before any data or weights are read.
"""

from __future__ import annotations

from dataclasses import dataclass

TOKENS = "tokens"
PIXELS = "pixels"


@dataclass(frozen=True)
class BackboneIO:
    consumes: str  # TOKENS | PIXELS
    produces: frozenset[str]  # of "token_states", "pooled", "feature_map", "pyramid"
    describe: str  # for messages


TEXT_IO = BackboneIO(TOKENS, frozenset({"token_states", "pooled"}), "a text encoder (token ids -> token states)")
CAUSAL_IO = BackboneIO(TOKENS, frozenset({"token_states"}), "a decoder LLM (token ids -> next-token logits)")
VISION_IO = BackboneIO(PIXELS, frozenset({"feature_map", "pyramid", "pooled"}),
                       "a vision backbone (pixels -> a pyramid of feature maps)")

_BY_KIND = {"encoder": TEXT_IO, "causal_lm": CAUSAL_IO, "vision": VISION_IO}


def io_of_kind(kind: str) -> BackboneIO:
    """The interface of ``model.kind`` (known from the config alone, before anything is loaded)."""
    return _BY_KIND[kind]


def io_of_backbone(backbone) -> BackboneIO:
    """The interface of a loaded backbone: vision backbones say so (``polytask_io``); text otherwise."""
    return getattr(backbone, "polytask_io", TEXT_IO)
