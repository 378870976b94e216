"""`python -m vla_dino.pretrain`: DINOv2 self-supervised pretraining on robot camera frames.

Modules: `config` (dataclass tree + YAML presets + dotted overrides), `train` (the loop),
`checkpoint` (atomic rotating checkpoints, RNG state), `sampler` (resumable sharded batches),
`distributed` (torchrun, DDP / FSDP2), `monitor` (collapse + NaN guard), `logger` (jsonl/csv/
tensorboard, loss curve). Kept import-free so `vla_dino.export` loads without the training stack.
"""
