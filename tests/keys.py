"""The keys the tests run with, shared by a test and the bus processes it starts."""

from __future__ import annotations

from typing import Final

PSEUDONYM_KEY: Final = "test-pseudonym-key"
# security.secrets_key: 32 bytes, base64 (test data only; production has its own)
SECRETS_KEY: Final = "dGVzdC1vbmx5IGtleSBmb3Igd2ViaG9vayBzZWNyZXQ="
