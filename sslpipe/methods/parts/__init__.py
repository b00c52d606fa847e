"""Parts the methods compose: a momentum (EMA) encoder, a FIFO feature queue, an index-addressed
memory bank. Their state is either replicated (the same on every process by construction, saved
once with the model) or per rank (saved for each process), as `state.py` defines once."""

from sslpipe.methods.parts.memory_bank import MemoryBank
from sslpipe.methods.parts.momentum import MomentumEncoder
from sslpipe.methods.parts.queue import FeatureQueue

__all__ = ["FeatureQueue", "MemoryBank", "MomentumEncoder"]
