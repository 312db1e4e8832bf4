"""Collective algorithms over mpi4py (allreduce, TokenRing attention, expert all-to-all)."""

from .allreduce import allreduce
from .attention import reference_attention, reference_attention_backward
from .ringattention import ring_attention, ring_attention_backward
from .ringexchange import RingStats
from .sequence import shard_positions, shard_sequence, unshard_sequence
from .tokenring import token_ring_attention, token_ring_attention_backward

__all__ = [
    "RingStats",
    "allreduce",
    "reference_attention",
    "reference_attention_backward",
    "ring_attention",
    "ring_attention_backward",
    "shard_positions",
    "shard_sequence",
    "token_ring_attention",
    "token_ring_attention_backward",
    "unshard_sequence",
]
