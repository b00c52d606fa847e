"""Turn a DALI failure inside the loader into an error that names the shard and the key.

DALI stops the whole pipeline on an undecodable image and does not say which sample it was. The
rank reads its samples in a known order, so the culprit is among those read so far: decode them
again, one batch at a time, with DALI's CPU decoder until one fails.
"""

from __future__ import annotations

from sslpipe.errors import SslpipeError
from sslpipe.pipeline.dali_stage import EpochPlan
from sslpipe.pipeline.shardlist import Shard, rank_range, read_images
from sslpipe.shards.decode_check import DaliDecodeCheck, first_reason

# What a repair does to a training run: the loader's saved state holds the sample count and a
# position in the rank's samples, so a run resumes only on a shard set of the same count.
REPAIR = ("To repair, convert the source again (`sslpipe convert ... --overwrite`, which rejects "
          "undecodable images): from unchanged source files and options it writes the same shards, and a "
          "training run resumes from its checkpoints exactly. If a sample is gone instead (its image "
          "rejected, or removed by hand), `sslpipe train --resume` refuses the checkpoints (the sample "
          "count changed): start the run afresh")


def diagnose_failure(shards: list[Shard], plan: EpochPlan, position: int, batch_size: int, prefetch: int,
                     message: str) -> SslpipeError:
    """The error to raise after DALI failed on batch `position` of `plan`, with DALI's `message`."""
    by_path = {str(s.path): s for s in shards}
    ordered = [by_path[t] for t in plan.tars]
    start, stop = rank_range(sum(len(s) for s in ordered), plan.rank, plan.world_size)
    # Read so far: the batches returned, the ones prefetched, and the shuffle buffer.
    read = (position + 1 + prefetch) * batch_size + (plan.shuffle_buffer if plan.shuffle else 0)
    stop = min(stop, start + read)
    checker = DaliDecodeCheck(threads=2)
    offset = 0
    for shard in ordered:
        first, last = max(start - offset, 0), min(stop - offset, len(shard))
        offset += len(shard)
        if first >= last:
            continue
        for chunk in range(first, last, 256):
            failures = checker.check(read_images(shard, chunk, min(chunk + 256, last)))
            if failures:
                key, reason = failures[0]
                return SslpipeError(f"{shard.path}: sample {key!r} cannot be decoded ({reason}); "
                                    f"run `sslpipe verify {shard.path.parent}` to check every shard. "
                                    f"{REPAIR}")
    return SslpipeError(f"DALI failed in epoch batch {position} of rank {plan.rank} (shards in "
                        f"{sorted({str(s.path.parent) for s in ordered})}): {first_reason(message)}")
