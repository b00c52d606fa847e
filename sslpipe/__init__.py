"""sslpipe: GPU input pipelines and trainers for self-supervised visual pretraining."""

__version__ = "0.1.0"
