"""Self-supervised losses, faithful to the papers' official code; all computed in float32.

    from sslpipe.losses import info_nce, negative_cosine, nt_xent, sinkhorn, swapped_prediction

Cross-rank communication goes through `sslpipe.distributed`, so each loss works unchanged in a
single process and under DDP.
"""

from sslpipe.losses.infonce import info_nce
from sslpipe.losses.negcosine import negative_cosine
from sslpipe.losses.ntxent import nt_xent
from sslpipe.losses.swav import sinkhorn, swapped_prediction

__all__ = ["info_nce", "negative_cosine", "nt_xent", "sinkhorn", "swapped_prediction"]
