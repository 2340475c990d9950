"""The key agent process an executor JVM starts for the tml:// file system
(``python -m trustedml._keyagent``, never by hand): it attests with this executor's own
evidence and serves the JVM its data keys (docs/jvm-fs.md)."""

from __future__ import annotations

import sys
from typing import Any

from trustedml.data import KeyStore
from trustedml.runtime import ExecutorKeyStore
from trustedml.spark import run_key_agent


def executor_store(descriptor: dict[str, Any]) -> KeyStore:
    """The store the descriptor names: the job's broker, attested with THIS process's
    evidence (its worker's TEE, from the environment the executor inherited)."""
    ca = descriptor.get("ca")
    job = descriptor.get("job_measurement")
    return ExecutorKeyStore(
        descriptor["url"],
        ca.encode("ascii") if ca else None,
        bytes.fromhex(job) if job else None,
        descriptor.get("key_ids") or (),
    )


def main() -> int:
    """Serve the JVM that started this process until it closes stdin."""
    return run_key_agent(executor_store)


if __name__ == "__main__":
    sys.exit(main())
