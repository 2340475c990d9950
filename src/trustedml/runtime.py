"""What a running job calls to get its keys.

``trustedml submit --kek ID`` hands the job the named key-encryption keys through
its environment (never argv or a file). Inside the job::

    from trustedml.runtime import job_keyring
    df = read_encrypted(spark, path, "csv", keystore=job_keyring(), header=True)

Attested key release from the key broker replaces this in a later release.
"""

from __future__ import annotations

import os

from trustedml._secret import Secret
from trustedml.data._keystore import KeyRing
from trustedml.errors import KeyStoreError

ENV_KEYRING = "TRUSTEDML_KEYRING"

__all__ = ["ENV_KEYRING", "job_keyring"]


def job_keyring() -> KeyRing:
    """The key-encryption keys this job was started with."""
    text = os.environ.get(ENV_KEYRING)
    if not text:
        raise KeyStoreError(
            f"this job has no keys: start it with `trustedml submit --kek ID` ({ENV_KEYRING} unset)"
        )
    return KeyRing.parse(Secret(text))
