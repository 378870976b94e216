"""Real-robot inference on a GPU workstation: runtime, action-chunk scheduling, cameras, policy server."""
