"""LeRobot policy plugin over vla_dino tokens (discovered by LeRobot through the distribution name)."""
