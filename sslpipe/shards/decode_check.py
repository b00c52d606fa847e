"""Decode encoded images with DALI's CPU decoder, as training will, and report the ones that fail."""

from __future__ import annotations

import numpy as np


class DaliDecodeCheck:
    """Decodes batches of encoded images on the CPU (no GPU needed) and names each failure.

    A decoding error leaves a DALI pipeline unusable, so after a failed batch the pipeline is
    rebuilt and the batch decoded image by image to find the culprits.
    """

    def __init__(self, threads: int = 2, batch_size: int = 64):
        self.threads, self.batch_size = max(1, threads), batch_size
        self._pipe = None

    def check(self, images: list[tuple[str, bytes]]) -> list[tuple[str, str]]:
        """[(key, encoded bytes)] -> [(key, error)] for the images that do not give HxWx3 uint8."""
        failures = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start:start + self.batch_size]
            try:
                failures += self._check_shapes(batch, self._decode(batch))
            except RuntimeError:
                self._pipe = None
                for key, data in batch:
                    try:
                        failures += self._check_shapes([(key, data)], self._decode([(key, data)]))
                    except RuntimeError as e:
                        self._pipe = None
                        failures.append((key, first_reason(str(e))))
        return failures

    def _decode(self, batch):
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("encoded", [np.frombuffer(data, np.uint8) for _, data in batch])
        (decoded,) = self._pipe.run()
        return [decoded.at(i).shape for i in range(len(batch))]

    @staticmethod
    def _check_shapes(batch, shapes):
        return [(key, f"decoded shape {tuple(shape)}") for (key, _), shape in zip(batch, shapes)
                if len(shape) != 3 or shape[2] != 3 or min(shape) < 1]

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types  # heavy import, only when decoding

        @pipeline_def(batch_size=self.batch_size, num_threads=self.threads, device_id=None,
                      prefetch_queue_depth=1)
        def decode_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

        pipe = decode_pipeline()
        pipe.build()
        return pipe


def first_reason(message: str) -> str:
    """DALI's error text is long (pipeline traceback); keep the line that says what failed."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for marker in ("Failed to decode", "nvImageCodec failure", "Error"):
        for line in lines:
            if marker in line and "Critical error" not in line:
                return line
    return lines[-1] if lines else "decoding failed"
