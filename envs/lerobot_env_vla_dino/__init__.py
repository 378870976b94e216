"""Gymnasium manipulation envs, scripted experts, demo collection and rollouts for vla_dino."""
