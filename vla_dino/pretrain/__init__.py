"""`python -m vla_dino.pretrain`: DINOv2 self-supervised pretraining on robot camera frames.

Modules: `config` (dataclass tree + YAML presets + dotted overrides), `train` (the loop),
`checkpoint` (atomic rotating checkpoints, RNG state), `sampler` (resumable sharded batches),
`distributed` (torchrun, DDP / FSDP2), `monitor` (collapse + NaN guard), `logger` (jsonl/csv/
tensorboard, loss curve), `export` (the teacher backbone of a checkpoint or of the finished run;
`python -m vla_dino.pretrain.export`). The one step is `vla_dino.ssl.SSLTrainer`. Nothing is
imported here, so `python -m vla_dino.pretrain.export` does not load the training stack.
"""
