"""Rotating the gateway's SM2 agreement keys: `portcullis keys agreement rotate|list|retire` and the reload
of the key file by running processes (gateway/envelope.py, docs/KEYS.md "Agreement keys")."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from harness import OffsetClock, gateway_config
from test_cli import _write_toml
from test_envelope import Customer, envelope_stack

from gateway.agreement_keys import (
    RELOAD_INTERVAL,
    AgreementKeyRefused,
    AgreementKeys,
    agreement_key_infos,
    retire_agreement_key,
    rotate_agreement_key,
)
from gateway.cli import main
from gateway.client.envelope import agree
from gateway.crypto.session import b64e
from gateway.crypto.sm2 import Sm2PrivateKey, Sm2PublicKey
from gateway.demo_keys import ensure_demo_keys

MAX_AGE, WINDOW = 600, 60
KEEP = MAX_AGE + WINDOW


class Clock:
    """The reload throttle's clock: moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += RELOAD_INTERVAL + 0.1


def _config(tmp: Path) -> Path:
    """A gateway configuration whose [envelope] names tmp/agreement.json."""
    data = gateway_config(ensure_demo_keys(tmp / "keys"), tmp, "http://127.0.0.1:1",
                          envelope={"agreement_key_file": str(tmp / "agreement.json"), "max_age": MAX_AGE,
                                    "window": WINDOW})
    path = tmp / "gateway.toml"
    _write_toml(path, data)
    return path


def _keys_cmd(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    code = main(["keys", "agreement", *args, "--config", str(config)])
    out = capsys.readouterr()
    return code, out.out, out.err


def _file(tmp: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((tmp / "agreement.json").read_text())
    return doc


def _first_key(tmp: Path) -> AgreementKeys:
    """The file as a gateway creates it at its first start."""
    return AgreementKeys.from_file(tmp / "agreement.json", create=True)


# -- the command -------------------------------------------------------------------------------------


def test_rotate_adds_a_current_key_and_keeps_the_old_ones(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    first = _first_key(tmp_path).current
    code, out, err = _keys_cmd(capsys, config, "rotate")
    assert code == 0, err
    doc = _file(tmp_path)
    new = doc["current"]
    assert new != first and new.startswith("ak-") and set(doc["keys"]) == {first, new}
    assert set(doc["created"]) == {first, new} and set(doc["superseded"]) == {first}
    public = AgreementKeys.from_file(tmp_path / "agreement.json").public(new)
    assert new in out and b64e(public) in out
    assert all(hexkey not in out + err for hexkey in doc["keys"].values())  # never private material
    assert os.stat(tmp_path / "agreement.json").st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_rotate_creates_the_file_when_absent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _keys_cmd(capsys, _config(tmp_path), "rotate")
    assert code == 0, err
    doc = _file(tmp_path)
    assert list(doc["keys"]) == [doc["current"]] and doc["superseded"] == {}
    assert os.stat(tmp_path / "agreement.json").st_mode & 0o777 == 0o600


def test_concurrent_rotations_lose_no_key(tmp_path: Path) -> None:
    path = tmp_path / "agreement.json"
    first = _first_key(tmp_path).current
    with ThreadPoolExecutor(8) as pool:
        kids = [kid for kid, _ in pool.map(lambda _: rotate_agreement_key(path, now=2000.0), range(8))]
    doc = _file(tmp_path)
    assert set(doc["keys"]) == {first, *kids} and doc["current"] in kids
    assert set(doc["superseded"]) == {first, *kids} - {doc["current"]}


def test_a_file_from_before_rotation_is_rotated_and_listed(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    old = Sm2PrivateKey.generate().to_bytes().hex()
    path = tmp_path / "agreement.json"
    path.write_text(json.dumps({"current": "ak-legacy", "keys": {"ak-legacy": old}}))
    path.chmod(0o600)
    config = _config(tmp_path)
    assert AgreementKeys.from_file(path).current == "ak-legacy"
    code, _, err = _keys_cmd(capsys, config, "rotate")
    assert code == 0, err
    doc = _file(tmp_path)
    assert doc["keys"]["ak-legacy"] == old and doc["current"] != "ak-legacy"
    code, out, _ = _keys_cmd(capsys, config, "list")
    [legacy] = [line for line in out.splitlines() if line.startswith("ak-legacy")]
    assert legacy.split()[1] == "-"  # created: not recorded


def test_list_shows_ids_which_is_current_and_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    first = _first_key(tmp_path).current
    _keys_cmd(capsys, config, "rotate")
    new = _file(tmp_path)["current"]
    code, out, _ = _keys_cmd(capsys, config, "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["kid", "created", "(UTC)", "current"]
    assert [r.split()[0] for r in rows] == [first, new]  # oldest first, the current one last
    old_row, new_row = (r.split() for r in rows)
    assert new_row[2] == "yes" and new_row[1].endswith("Z") and "yes" not in old_row
    assert all(hexkey not in out for hexkey in _file(tmp_path)["keys"].values())


def test_retire_refuses_the_current_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    current = _first_key(tmp_path).current
    before = _file(tmp_path)
    code, _, err = _keys_cmd(capsys, config, "retire", current, "--force")
    assert code == 2
    assert f"{current} is the current agreement key: rotate first" in err
    assert _file(tmp_path) == before


def test_retire_refuses_a_just_rotated_key_without_force(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    first = _first_key(tmp_path).current
    _keys_cmd(capsys, config, "rotate")
    code, _, err = _keys_cmd(capsys, config, "retire", first)
    assert code == 2
    assert f"less than max_age + window ({KEEP} s) ago" in err and "--force" in err
    assert first in _file(tmp_path)["keys"]


def test_retire_with_force_removes_a_just_rotated_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    first = _first_key(tmp_path).current
    _keys_cmd(capsys, config, "rotate")
    code, out, err = _keys_cmd(capsys, config, "retire", first, "--force")
    assert code == 0, err
    assert first in out
    doc = _file(tmp_path)
    assert first not in doc["keys"] and first not in doc["created"] and first not in doc["superseded"]


def test_retire_accepts_a_key_superseded_max_age_plus_window_ago(tmp_path: Path) -> None:
    path = tmp_path / "agreement.json"
    first = _first_key(tmp_path).current
    rotate_agreement_key(path, now=5000.0)
    with pytest.raises(AgreementKeyRefused):
        retire_agreement_key(path, first, keep=KEEP, now=5000.0 + KEEP - 1)
    [row] = [r for r in agreement_key_infos(path, keep=KEEP) if r.kid == first]
    assert row.superseded == 5000.0 and row.retire_from == 5000.0 + KEEP
    retire_agreement_key(path, first, keep=KEEP, now=5000.0 + KEEP)
    assert first not in _file(tmp_path)["keys"]


def test_retire_of_an_unknown_key_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path)
    _first_key(tmp_path)
    code, _, err = _keys_cmd(capsys, config, "retire", "ak-000000000000")
    assert code == 2 and "no agreement key 'ak-000000000000'" in err


# -- running processes pick up a rotation --------------------------------------------------------------


def test_a_rotation_is_seen_after_the_reload_interval_and_old_material_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "agreement.json"
    clock = Clock()
    keys = AgreementKeys.from_file(path, create=True, clock=clock)
    old = keys.current
    sealed = Sm2PublicKey.from_bytes(keys.public(old)).encrypt(b"k" * 32)  # sent before the rotation
    new, public = rotate_agreement_key(path, now=2000.0)
    assert not keys.refresh() and keys.current == old  # within the interval: no look at the file
    clock.tick()
    assert keys.refresh()
    assert keys.current == new and keys.public() == public
    private = keys.get(old)
    assert private is not None and private.decrypt(sealed) == b"k" * 32


def test_an_unknown_key_id_looks_at_the_file_at_once(tmp_path: Path) -> None:
    path = tmp_path / "agreement.json"
    keys = AgreementKeys.from_file(path, create=True, clock=Clock())
    new, _ = rotate_agreement_key(path, now=2000.0)  # another process offers it already
    assert not keys.refresh() and keys.get(new) is None
    assert keys.refresh(force=True) and keys.get(new) is not None


def test_a_retired_key_leaves_running_processes(tmp_path: Path) -> None:
    path = tmp_path / "agreement.json"
    clock = Clock()
    keys = AgreementKeys.from_file(path, create=True, clock=clock)
    old = keys.current
    rotate_agreement_key(path, now=2000.0)
    retire_agreement_key(path, old, keep=KEEP, now=2000.0, force=True)
    clock.tick()
    assert keys.refresh() and keys.get(old) is None and keys.ids == [keys.current]


def test_a_corrupted_file_after_rotation_keeps_the_old_keys(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "agreement.json"
    clock = Clock()
    keys = AgreementKeys.from_file(path, create=True, clock=clock)
    old = keys.current
    rotate_agreement_key(path, now=2000.0)
    secret = path.read_text()
    path.write_text(secret[: len(secret) // 2])  # a torn copy, mode still 0600
    with caplog.at_level(logging.WARNING, logger="portcullis.agreement_keys"):
        clock.tick()
        assert not keys.refresh()
        clock.tick()
        assert not keys.refresh()  # the same broken file: not read or warned about again
    assert keys.current == old and keys.get(old) is not None
    [warning] = caplog.records
    assert "not a valid agreement key file" in warning.getMessage() and "keeping the 1 loaded" in warning.getMessage()
    assert all(v not in caplog.text for v in json.loads(secret)["keys"].values())


def test_a_group_readable_file_after_rotation_keeps_the_old_keys(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "agreement.json"
    clock = Clock()
    keys = AgreementKeys.from_file(path, create=True, clock=clock)
    old = keys.current
    new, _ = rotate_agreement_key(path, now=2000.0)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="portcullis.agreement_keys"):
        clock.tick()
        assert not keys.refresh()
    assert keys.current == old and keys.ids == [old]
    [warning] = caplog.records
    assert "chmod 600" in warning.getMessage()
    path.chmod(0o600)  # fixed: loaded at the next look
    clock.tick()
    assert keys.refresh() and keys.current == new


async def test_a_running_gateway_offers_the_rotated_key_and_agrees_under_the_old_one(tmp_path: Path) -> None:
    clock = OffsetClock()
    async with envelope_stack(tmp_path, clock=clock) as stack, aiohttp.ClientSession() as http:
        me = Customer(stack, http)
        url = stack.url + "/auth/session-key"
        async with http.get(url, headers=me.headers("GET", url)) as r:
            before = (r.status, await r.read())  # a client holding the offer across the rotation
        old = json.loads(before[1])["agreement_kid"]
        new, public = rotate_agreement_key(tmp_path / "agreement.json", now=clock())
        clock.offset += RELOAD_INTERVAL + 1
        async with http.get(url, headers=me.headers("GET", url)) as r:
            offer = await r.json()
        assert offer["agreement_kid"] == new and offer["public_key"] == b64e(public)
        flow = agree(stack.url, me.headers, sub="alice", jkt=me.device.thumbprint)
        next(flow)  # the GET: answered with the offer from before the rotation
        method, post_url, headers, body = flow.send(before)
        assert json.loads(body or b"")["agreement_kid"] == old
        async with http.request(method, post_url, headers=headers, data=body) as r:
            answer = (r.status, await r.read())
        with pytest.raises(StopIteration) as done:
            flow.send(answer)  # the confirmation checks out: the gateway opened it with the old key
        assert done.value.value.key_id
        assert (await me.agree()).key_id  # and a new client agrees under the new key
