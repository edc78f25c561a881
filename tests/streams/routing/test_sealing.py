"""Webhook secrets sealed at rest: what the subscriptions topic holds, and what it refuses."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from test_subscriptions import subscription

from streams.config import Settings
from streams.exceptions import ConfigurationError
from streams.routing.records import Records
from streams.routing.sealing import CLEAR, Keyring, SealRefused, key_id, new_key
from streams.routing.subscriptions import Subscription

TOKEN = "sink-access-token-7f3a9c"
SECRET = "whsec_" + base64.b64encode(b"signing secret of 24 byt").decode()
K1, K2 = bytes(range(32)), bytes(range(1, 33))


def webhook(sub_id: str = "gemeente-0363-verhuizingen") -> Subscription:
    return subscription(
        id=sub_id,
        sinkCredential={"accessToken": TOKEN},
        signingSecret=SECRET,
    )


def stored(records: Records, sub: Subscription) -> tuple[bytes, dict[str, Any]]:
    """The key and the JSON of the subscription's own record, as written to the topic."""
    key, value = records.put(sub)[-1]
    assert value is not None
    return key, json.loads(value)


def test_the_record_holds_no_secret_and_opens_to_the_same_subscription() -> None:
    records = Records(Keyring(K1))
    sub = webhook()
    key, body = stored(records, sub)
    raw = json.dumps(body).encode()
    assert TOKEN.encode() not in raw
    assert b"whsec_" not in raw and SECRET.encode() not in raw
    sealed = body["sinkCredential"]["accessToken"]
    assert set(sealed) == {"sealed", "kid", "nonce", "ct"}
    assert sealed["sealed"] == "v1" and sealed["kid"] == key_id(K1)
    assert len(base64.b64decode(sealed["nonce"])) == 12
    assert body["signingSecret"]["nonce"] != sealed["nonce"]  # a fresh nonce each

    reader = Records(Keyring(K1))  # another process with the same key
    applied = reader.apply(key, raw)
    assert applied.subscription is not None
    assert applied.subscription.record_dict() == sub.record_dict()
    assert reader.sealed_with[sub.id] == {key_id(K1)}


def test_each_write_seals_anew() -> None:
    records = Records(Keyring(K1))
    _, first = stored(records, webhook())
    _, second = stored(records, webhook())
    assert first["signingSecret"]["ct"] != second["signingSecret"]["ct"]


def test_a_record_sealed_under_another_key_is_refused() -> None:
    key, body = stored(Records(Keyring(K1)), webhook())
    with pytest.raises(SealRefused) as caught:
        Records(Keyring(K2)).apply(key, json.dumps(body).encode())
    assert caught.value.code == "unknown_key"
    assert caught.value.subscription_id == webhook().id
    # the same ciphertext claiming the reader's key id does not verify either
    body["sinkCredential"]["accessToken"]["kid"] = key_id(K2)
    with pytest.raises(SealRefused) as forged:
        Records(Keyring(K2)).apply(key, json.dumps(body).encode())
    assert forged.value.code == "not_verified"


@pytest.mark.parametrize("part", ["ct", "nonce"])
def test_a_tampered_seal_is_refused(part: str) -> None:
    key, body = stored(Records(Keyring(K1)), webhook())
    sealed = body["signingSecret"]
    raw = bytearray(base64.b64decode(sealed[part]))
    raw[0] ^= 0x01
    sealed[part] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SealRefused) as caught:
        Records(Keyring(K1)).apply(key, json.dumps(body).encode())
    assert (caught.value.field, caught.value.code) == ("signingSecret", "not_verified")


def test_a_seal_moved_to_another_subscription_or_field_is_refused() -> None:
    records = Records(Keyring(K1))
    _, a = stored(records, webhook("sub-a"))
    key_b, b = stored(records, webhook("sub-b"))
    moved = {**b, "signingSecret": a["signingSecret"]}
    with pytest.raises(SealRefused) as caught:
        Records(Keyring(K1)).apply(key_b, json.dumps(moved).encode())
    assert (caught.value.subscription_id, caught.value.code) == ("sub-b", "not_verified")
    # a whole record of sub-a written under the key of sub-b: bound to the key's id
    with pytest.raises(SealRefused):
        Records(Keyring(K1)).apply(key_b, json.dumps({**a, "id": "sub-b"}).encode())
    # the token's seal in the signing secret's place (same subscription)
    swapped = {**b, "signingSecret": b["sinkCredential"]["accessToken"]}
    with pytest.raises(SealRefused) as field:
        Records(Keyring(K1)).apply(key_b, json.dumps(swapped).encode())
    assert (field.value.field, field.value.code) == ("signingSecret", "not_verified")


def test_a_clear_text_secret_is_refused_unless_rotating() -> None:
    sub = webhook()
    clear = json.dumps(sub.record_dict()).encode()  # what the bus wrote before sealing
    with pytest.raises(SealRefused) as caught:
        Records(Keyring(K1)).apply(sub.id.encode(), clear)
    assert caught.value.code == "clear_secret"
    rotating = Records(Keyring(K1), accept_clear=True)
    applied = rotating.apply(sub.id.encode(), clear)
    assert applied.subscription is not None and applied.subscription.record_dict() == (
        sub.record_dict()
    )
    assert rotating.sealed_with[sub.id] == {CLEAR}


@pytest.mark.parametrize(
    "value",
    [{"sealed": "v2", "kid": "x", "nonce": "", "ct": ""}, {"sealed": "v1"}, 7, ["a"]],
)
def test_a_malformed_seal_is_refused(value: object) -> None:
    key, body = stored(Records(Keyring(K1)), webhook())
    body["signingSecret"] = value
    with pytest.raises(SealRefused) as caught:
        Records(Keyring(K1)).apply(key, json.dumps(body).encode())
    assert caught.value.code == "malformed_seal"


def test_a_refused_record_leaves_the_previous_state() -> None:
    records = Records(Keyring(K1))
    sub = webhook()
    key, body = stored(records, sub)
    records.apply(key, json.dumps(body).encode())
    changed = {**body, "sink": "https://elders.example/hook", "signingSecret": SECRET}
    with pytest.raises(SealRefused):
        records.apply(key, json.dumps(changed).encode())
    assert records.subscriptions[sub.id].sink == sub.sink
    assert records.sealed_with[sub.id] == {key_id(K1)}


def test_rotation_opens_with_the_previous_key_and_seals_with_the_current() -> None:
    sub = webhook()
    key, old = stored(Records(Keyring(K1)), sub)
    rotating = Records(Keyring(K2, previous=(K1,)))
    applied = rotating.apply(key, json.dumps(old).encode())
    assert applied.subscription is not None
    assert rotating.sealed_with[key.decode()] == {key_id(K1)}
    _, resealed = stored(rotating, applied.subscription)
    assert resealed["signingSecret"]["kid"] == key_id(K2)
    after = Records(Keyring(K2)).apply(key, json.dumps(resealed).encode())  # K1 retired
    assert after.subscription is not None
    assert after.subscription.record_dict() == sub.record_dict()
    with pytest.raises(SealRefused):  # the old record needs the old key
        Records(Keyring(K2)).apply(key, json.dumps(old).encode())


def test_no_secret_in_reprs() -> None:
    sub = webhook()
    keyring = Keyring(K1, previous=(K2,))
    for text in (repr(sub), str(sub), repr(keyring), repr(sub.sink_credential)):
        assert TOKEN not in text and SECRET not in text
    assert K1.hex() not in repr(keyring) and base64.b64encode(K1).decode() not in repr(keyring)
    assert repr(keyring) == f"Keyring(kid={key_id(K1)!r}, opens={[key_id(K1), key_id(K2)]!r})"
    refused = SealRefused("sub-a", "signingSecret", "not_verified")
    assert str(refused) == "subscription sub-a: signingSecret refused (not_verified)"


# -- the key from the configuration ---------------------------------------------------------


def settings(mode: str = "production", **security: Any) -> Settings:
    return Settings.model_validate({"mode": mode, "security": security})


def test_production_refuses_to_run_without_the_key() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Keyring.from_settings(settings(pseudonym_key="p"))
    assert "GEMEENTEBUS_SECURITY__SECRETS_KEY" in str(caught.value)
    assert "security.secrets_key_file" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_outside_production_the_key_is_derived_from_the_pseudonym_key() -> None:
    one = Keyring.from_settings(settings("test", pseudonym_key="p"))
    two = Keyring.from_settings(settings("demo", pseudonym_key="p"))
    other = Keyring.from_settings(settings("test", pseudonym_key="q"))
    assert one.kid == two.kid != other.kid  # every process of one configuration agrees
    given = Keyring.from_settings(settings("test", pseudonym_key="p", secrets_key=new_key()))
    assert given.kid != one.kid


def test_the_key_from_a_file_and_the_previous_keys(tmp_path: Path) -> None:
    current, old1, old2 = new_key(), new_key(), new_key()
    (tmp_path / "key").write_text(current + "\n")
    (tmp_path / "old").write_text(f"{old1}\n\n{old2}\n")
    keyring = Keyring.from_settings(
        settings(
            secrets_key_file=str(tmp_path / "key"),
            previous_keys_file=str(tmp_path / "old"),
        )
    )
    assert keyring.kids == tuple(key_id(base64.b64decode(k)) for k in (current, old1, old2))


def test_previous_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    current, old = new_key(), new_key()
    monkeypatch.setenv("GEMEENTEBUS_SECURITY__SECRETS_KEY", current)
    monkeypatch.setenv("GEMEENTEBUS_SECURITY__PREVIOUS_KEYS", json.dumps([old]))
    keyring = Keyring.from_settings(Settings())
    assert keyring.kids == (key_id(base64.b64decode(current)), key_id(base64.b64decode(old)))


@pytest.mark.parametrize(
    ("given", "named", "why"),
    [
        ({"secrets_key": "not base64!"}, "security.secrets_key", "not base64"),
        ({"secrets_key": base64.b64encode(b"short").decode()}, "security.secrets_key", "5 bytes"),
        (
            {"secrets_key": new_key(), "previous_keys": ["c2hvcnQ="]},
            "security.previous_keys[0]",
            "5 bytes",
        ),
        ({"secrets_key_file": "/nonexistent/key"}, "security.secrets_key_file", "cannot be read"),
    ],
)
def test_a_bad_key_names_the_setting_not_the_value(
    given: dict[str, Any], named: str, why: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Keyring.from_settings(settings(**given))
    message = str(caught.value)
    assert named in message and why in message
    for value in given.values():
        if isinstance(value, str) and not value.startswith("/"):
            assert value not in message
