"""seqattn_core: Sequential Attention gates, the selector and the large embedding model (no I/O)."""

from seqattn_core.attention import SequentialAttention
from seqattn_core.selector import SequentialAttentionSelector

__all__ = ["SequentialAttention", "SequentialAttentionSelector"]
