"""Block attention kernels for sequence-parallel attention, their merge, and a float64 reference.

The kernels work on *sequence-major* arrays, ``[L, B, H, D]`` for queries and ``[L, B, H_kv, D]``
for keys and values (``H_kv`` divides ``H``; query head ``h`` uses key head ``h // (H / H_kv)``),
so that any run of rows is one contiguous piece of memory that can travel as one message.
They accumulate in float32, or float64 for float64 inputs, tile the queries so that the score
matrix stays small, and call a ``progress`` function between tiles (ring algorithms use it to
keep their nonblocking transfers moving while the block is computed). Rows that see no key get
``lse = -inf`` and a zero output; merging handles ``-inf`` on either side.

``reference_attention`` and ``reference_attention_backward`` compute the whole sequence in one
process in float64 with dense formulas that share no code with the kernels; tests use them.
The same code runs on numpy and cupy arrays.

The package: :mod:`.inputs` (arrays, checks, shapes, signatures), :mod:`.layout`
(sequence-major and heads-major views), :mod:`.kernels` (block attention, its
backward pass, the merge of partial results), :mod:`.reference` (float64).
"""

from .inputs import (
    AttentionShape,
    accumulation_dtype,
    array_namespace,
    attention_signature,
    check_attention_inputs,
    softmax_scale_for,
    to_host,
)
from .kernels import (
    KeyValues,
    block_attention,
    block_attention_backward,
    blocks_attention,
    blocks_attention_backward,
    merge_partial,
)
from .layout import from_sequence_major, to_sequence_major
from .reference import reference_attention, reference_attention_backward

__all__ = [
    "AttentionShape",
    "KeyValues",
    "accumulation_dtype",
    "array_namespace",
    "attention_signature",
    "block_attention",
    "block_attention_backward",
    "blocks_attention",
    "blocks_attention_backward",
    "check_attention_inputs",
    "from_sequence_major",
    "merge_partial",
    "reference_attention",
    "reference_attention_backward",
    "softmax_scale_for",
    "to_host",
    "to_sequence_major",
]
