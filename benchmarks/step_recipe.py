"""The crops and heads a step benchmark runs (DINOv2's recipe by default), shared by the scripts that time the
pretraining step (`bench_ssl_step.py`, `bench_ddp_scaling.py`) so they time the same step."""

from __future__ import annotations

import argparse

from vla_dino.ssl import SSLConfig


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="vits14", help="DinoEncoder size name (vits14, vitb14, small-test, …)")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=98)
    parser.add_argument("--num-local", type=int, default=8)
    parser.add_argument("--prototypes", type=int, default=65536)
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)


def recipe_config(args: argparse.Namespace, global_batch: int, centering: str = "sinkhorn") -> SSLConfig:
    """DINOv2's SSL config with the crops, prototypes and lr-scaling batch of the command line."""
    config = SSLConfig()
    config.crops.global_size, config.crops.local_size, config.crops.num_local = args.global_size, args.local_size, args.num_local
    config.heads.num_prototypes = args.prototypes
    config.loss.centering = centering
    config.optim.batch_size = global_batch
    return config
