"""SLURM: `submit` renders an sbatch script for a training config and submits it (the `submit` verb);
`slurm_local.sh` starts a single-node SLURM on localhost for the tests (`make slurm-up`)."""
