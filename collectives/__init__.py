"""Collective algorithms over mpi4py (allreduce, TokenRing attention, expert all-to-all)."""

from .allreduce import allreduce
from .attention import reference_attention, reference_attention_backward
from .moe import MoEHandle, RecvInfo, combine, dispatch, release_buffers
from .placement import Placement, place_experts, placement_cost, transition_counts, transition_fractions
from .ringattention import ring_attention, ring_attention_backward
from .ringexchange import RingStats
from .sequence import shard_positions, shard_sequence, unshard_sequence
from .tokenring import token_ring_attention, token_ring_attention_backward
from .traces import AffinityModel, synthetic_trace

__all__ = [
    "AffinityModel",
    "MoEHandle",
    "Placement",
    "RecvInfo",
    "RingStats",
    "allreduce",
    "combine",
    "dispatch",
    "place_experts",
    "placement_cost",
    "reference_attention",
    "reference_attention_backward",
    "release_buffers",
    "ring_attention",
    "ring_attention_backward",
    "shard_positions",
    "shard_sequence",
    "synthetic_trace",
    "token_ring_attention",
    "token_ring_attention_backward",
    "transition_counts",
    "transition_fractions",
    "unshard_sequence",
]
