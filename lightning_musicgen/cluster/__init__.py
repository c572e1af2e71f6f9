"""Scale-out: SLURM submission (`submit`), exact resume and preemption (`resume`), atomic
checkpoint writes (`checkpoint_io`), a requeue-safe W&B logger (`logger`), FSDP wrapping by
transformer layer (`fsdp`) and per-layer torch.compile (`compile`).

Submodules are imported on use so `submit --dry-run` stays light."""
