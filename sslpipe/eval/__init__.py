"""Evaluation protocols for a backbone, from shards: features, weighted kNN, linear probe,
semi-supervised fine-tuning on label subsets. Running them on a run's checkpoint is
`sslpipe.runs`."""
