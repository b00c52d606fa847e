"""Self-supervised losses, faithful to the papers' official code; all computed in float32.

    from sslpipe.losses import info_nce, nt_xent, regression_loss, triplet_loss, nce_loss, ...

Cross-rank communication goes through `sslpipe.distributed`, so each loss works unchanged in a
single process and under DDP.
"""

from sslpipe.losses.byol import regression_loss
from sslpipe.losses.infonce import info_nce
from sslpipe.losses.invaspread import batch_criterion
from sslpipe.losses.mocov3 import moco_v3_ctr
from sslpipe.losses.nce import bank_scores, bank_softmax, nce_loss, nce_normalizer
from sslpipe.losses.negcosine import negative_cosine
from sslpipe.losses.ntxent import nt_xent
from sslpipe.losses.swav import sinkhorn, swapped_prediction
from sslpipe.losses.triplet import triplet_loss

__all__ = ["bank_scores", "bank_softmax", "batch_criterion", "info_nce", "moco_v3_ctr", "nce_loss",
           "nce_normalizer", "negative_cosine", "nt_xent", "regression_loss", "sinkhorn",
           "swapped_prediction", "triplet_loss"]
