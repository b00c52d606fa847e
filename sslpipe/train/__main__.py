"""`accelerate launch -m sslpipe.train RECIPE [key=value ...] [--resume [PATH]]`: the same as
`sslpipe train`, in the form Accelerate (and torchrun, Slurm's srun) launch."""

import sys

from sslpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
