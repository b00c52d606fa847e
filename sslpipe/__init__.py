"""sslpipe: GPU input pipelines and trainers for self-supervised visual pretraining.

    import sslpipe

    loader = sslpipe.ViewLoader("simclr", "shards/train-*.tar", batch_size=256, device="cuda")
"""

__version__ = "0.1.0"

# The pipeline API, imported on first use: `sslpipe --help` should not wait for torch and DALI.
_PIPELINE = ("Batch", "DecoderOptions", "PipelineSpec", "ViewLoader", "ViewSpec", "load_spec")
__all__ = ["__version__", *_PIPELINE]


def __getattr__(name: str):
    if name in _PIPELINE:
        import sslpipe.pipeline

        return getattr(sslpipe.pipeline, name)
    raise AttributeError(f"module 'sslpipe' has no attribute {name!r}")
