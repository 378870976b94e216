"""``python -m vla_dino.runtime.serve --policy.path=<run>/checkpoints/last/pretrained_model``

Loads the checkpoint into a warm :class:`~vla_dino.runtime.runtime.PolicyRuntime` and serves it
(127.0.0.1:8765 by default). To accept other machines, bind an address and set a token (and, on a shared LAN, a TLS
certificate so the token is not sent in clear text)::

    VLA_DINO_SERVER_TOKEN=$(openssl rand -hex 16) python -m vla_dino.runtime.serve \\
        --policy.path=... --server.host=0.0.0.0 --server.tls_cert=cert.pem --server.tls_key=key.pem
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field

import draccus

from vla_dino.runtime.runtime import PolicyRuntime, RuntimeConfig
from vla_dino.runtime.server import TOKEN_ENV, PolicyServer, ServerConfig


@dataclass
class PolicyPath:
    path: str = ""  # checkpoint folder (.../pretrained_model or its parent step folder)


@dataclass
class ServeConfig:
    policy: PolicyPath = field(default_factory=PolicyPath)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    server: ServerConfig = field(default_factory=ServerConfig)


def build_server(config: ServeConfig) -> PolicyServer:
    """Check the server settings first (cheap), then load and warm up the policy."""
    if not config.policy.path:
        raise ValueError("--policy.path is required (a LeRobot checkpoint folder)")
    if config.server.token is None:
        config.server.token = os.environ.get(TOKEN_ENV) or None
    # Fail on an unsafe bind before spending a minute loading weights.
    PolicyServer._check_bind(config.server)
    runtime = PolicyRuntime.from_pretrained(config.policy.path, config.runtime)
    for note in runtime.notes:
        logging.info("runtime: %s", note)
    return PolicyServer(runtime, config.server)


def configure_logging(level: int = logging.INFO) -> None:
    """Own the root logger for this CLI: importing LeRobot installs handlers first, which turns a plain
    ``basicConfig`` into a no-op and hid the server's auth banner and its rejection logs."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("vla_dino").setLevel(level)


def main(argv: list[str] | None = None) -> None:
    configure_logging()
    config = draccus.parse(ServeConfig, args=argv)
    server = build_server(config).start()
    print(f"serving {config.policy.path} on {server.url} (Ctrl-C to stop)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
