"""Prepare source images in parallel, in order: Pillow inspects, DALI decodes as training will.

One chunk of paths per task (one message per image would cost as much as decoding it), a
bounded window of chunks in flight, results in the order of the paths. Worker processes are
spawned, ignore Ctrl-C (the main process handles it) and exit if the main process dies.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import cache
from itertools import islice
from pathlib import Path

from sslpipe.errors import SslpipeError
from sslpipe.shards.decode_check import DaliDecodeCheck
from sslpipe.shards.images import ImagePolicy, Prepared, Rejected, prepare_bytes, prepare_image


def prepare_in_order(paths: list[Path], policy: ImagePolicy, workers: int, chunk: int = 16):
    """Yield the result of each path, in order; `workers` > 1 computes them in that many processes,
    with at most 4 chunks per worker in flight so that results cannot pile up behind a slow disk."""
    chunks = (paths[i:i + chunk] for i in range(0, len(paths), chunk))
    if workers <= 1:
        for paths_chunk in chunks:
            yield from _prepare_chunk(paths_chunk, policy)
        return
    # spawn: forking a process that runs threads (tqdm's monitor, DALI's) is unsafe.
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    try:
        pending = deque(pool.submit(_prepare_chunk, c, policy) for c in islice(chunks, 4 * workers))
        while pending:
            results = pending.popleft().result()
            pending.extend(pool.submit(_prepare_chunk, c, policy) for c in islice(chunks, 1))
            yield from results
    except BrokenProcessPool:  # from result() or submit(), whichever notices first
        # The pool's manager thread has already terminated the other workers; wait for it to end.
        # shutdown(wait=False) here races with it and can hang the exit (CPython gh-132969).
        pool.shutdown(wait=True, cancel_futures=True)
        raise SslpipeError("a worker process died (out of memory? killed?); the complete shards "
                           "are kept: re-run the same command to resume") from None
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # no-op after the shutdown above


def _prepare_chunk(paths: list[Path], policy: ImagePolicy) -> list[Prepared | Rejected]:
    """`prepare_image` for each path; then DALI decodes every JPEG to be written, as training will.

    That decode is the pixel check of the JPEGs kept as they are (one decode per image, not
    two). What DALI refuses goes through Pillow's full decode: rejected when that fails too
    (truncated, corrupt), else re-encoded from Pillow's pixels.
    """
    results = [prepare_image(path, policy, check_pixels=False) for path in paths]
    written = [(i, r.jpeg) for i, r in enumerate(results) if isinstance(r, Prepared)]
    for i, error in _dali_decoder().check(written):
        fallback = Rejected("undecodable", f"DALI's decoder fails on it: {error}")
        if not results[i].reencoded:
            fallback = prepare_bytes(results[i].jpeg, policy, force="dali_decode")
            if isinstance(fallback, Prepared) and _dali_decoder().check([(i, fallback.jpeg)]):
                fallback = Rejected("undecodable", f"DALI's decoder fails on it, even re-encoded: {error}")
        results[i] = fallback
    return results


@cache
def _dali_decoder() -> DaliDecodeCheck:
    # One single-threaded DALI pipeline per process: the processes are the parallelism.
    return DaliDecodeCheck(threads=1)


def _start_worker(parent: int) -> None:
    # Ctrl-C is handled by the main process, which stops the pool; workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker waits for work on a pipe that it holds open itself, so it would outlive a killed
    # main process (kill -9, the out-of-memory killer) for ever: watch the parent instead.
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()


def _exit_without(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
