"""Work on a finished (or running) run, above the training loop: `sslpipe eval` (the evaluation
protocols of `sslpipe.eval` on the run's backbone against a random one, the table, the plot) and
`sslpipe export`."""
