"""gateway.crypto key ring: stores, the master key, purpose keys and rotation, customer keys and erasure."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.crypto.key_errors import KeyErased, KeyNotFound, KeyRingError, KeyStoreError, KeyUnwrapError
from gateway.crypto.keyring import DataKey, KeyRing, Kms, LocalKms
from gateway.crypto.keystore import FileKeyStore, KeyStore, MemoryKeyStore

ROOT = Path(__file__).resolve().parents[1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _YieldingStore(MemoryKeyStore):
    """A store that lets other tasks run inside every call, as a network store does."""

    async def get(self, name: str) -> bytes | None:
        await asyncio.sleep(0)
        return await super().get(name)

    async def add(self, name: str, value: bytes) -> bool:
        await asyncio.sleep(0)
        return await super().add(name, value)


def _ring(store: KeyStore | None = None, kms: LocalKms | None = None, **kw: object) -> KeyRing:
    return KeyRing(kms or LocalKms.generate(), store or MemoryKeyStore(), **kw)  # type: ignore[arg-type]


# -- stores --------------------------------------------------------------------------


def test_the_shipped_stores_and_kms_satisfy_the_protocols(tmp_path: Path) -> None:
    assert isinstance(MemoryKeyStore(), KeyStore) and isinstance(FileKeyStore(tmp_path / "k.json"), KeyStore)
    assert isinstance(LocalKms.generate(), Kms)


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_store_add_writes_only_when_absent(kind: str, tmp_path: Path) -> None:
    store: KeyStore = MemoryKeyStore() if kind == "memory" else FileKeyStore(tmp_path / "keys.json")
    assert await store.add("a/1", b"one") is True
    assert await store.add("a/1", b"two") is False
    assert await store.get("a/1") == b"one"
    await store.put("a/1", b"three")
    await store.put("b/1", b"x")
    assert await store.get("a/1") == b"three"
    assert await store.names("a/") == ["a/1"]
    assert await store.delete("a/1") is True and await store.delete("a/1") is False
    assert await store.get("a/1") is None


async def test_file_store_is_created_0600_and_rewritten_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    store = FileKeyStore(path)
    await store.put("x", b"1")
    assert _mode(path) == 0o600
    await store.put("y", b"2")
    assert _mode(path) == 0o600
    assert json.loads(path.read_text()) == {"x": "MQ==", "y": "Mg=="}
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


async def test_file_store_refuses_a_file_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    store = FileKeyStore(path)
    await store.put("x", b"1")
    os.chmod(path, 0o644)
    with pytest.raises(KeyStoreError, match="chmod 600"):
        await store.get("x")


async def test_file_store_refuses_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text("{not json")
    os.chmod(path, 0o600)
    with pytest.raises(KeyStoreError, match="not JSON"):
        await FileKeyStore(path).get("x")


# -- the master key ------------------------------------------------------------------


def test_master_key_file_is_created_0600_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "master.json"
    kms = LocalKms.from_file(path, create=True)
    assert _mode(path) == 0o600
    assert LocalKms.from_file(path).key_id == kms.key_id


def test_master_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.json"
    LocalKms.from_file(path, create=True)
    os.chmod(path, 0o640)
    with pytest.raises(KeyRingError, match="chmod 600"):
        LocalKms.from_file(path)


def test_missing_master_key_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match="does not exist"):
        LocalKms.from_file(tmp_path / "absent.json")


@pytest.mark.parametrize("size", [16, 32])
async def test_master_key_from_environment(size: int) -> None:
    env = {"PORTCULLIS_MASTER_KEY": base64.b64encode(os.urandom(size)).decode()}
    kms = LocalKms.from_env(environ=env)
    wrapped = await kms.wrap(b"k" * 16, b"aad")
    assert await LocalKms.from_env(environ=env).unwrap(wrapped, b"aad") == b"k" * 16


@pytest.mark.parametrize(("value", "message"), [(None, "not set"), ("***", "base64"),
                                                (base64.b64encode(b"short").decode(), "16 or 32 bytes")])
def test_bad_master_key_in_environment_is_named(value: str | None, message: str) -> None:
    env = {} if value is None else {"PORTCULLIS_MASTER_KEY": value}
    with pytest.raises(KeyRingError, match=message):
        LocalKms.from_env(environ=env)


async def test_another_master_key_does_not_unwrap() -> None:
    wrapped = await LocalKms.generate().wrap(b"k" * 16, b"aad")
    with pytest.raises(KeyUnwrapError):
        await LocalKms.generate().unwrap(wrapped, b"aad")


# -- purpose keys and rotation ----------------------------------------------------------


async def test_create_then_current_and_key_by_id() -> None:
    ring = _ring()
    info = await ring.create("audit")
    key = await ring.current("audit")
    assert key.kid == info.kid and info.current and len(key.material) == 16
    assert (await ring.key("audit", info.kid)).material == key.material


async def test_create_twice_is_refused() -> None:
    ring = _ring()
    await ring.create("audit")
    with pytest.raises(KeyRingError, match="rotate"):
        await ring.create("audit")


async def test_unknown_purpose_is_key_not_found() -> None:
    with pytest.raises(KeyNotFound, match="portcullis keys create"):
        await _ring().current("audit")


async def test_bad_purpose_name_is_refused() -> None:
    with pytest.raises(KeyRingError, match="purpose"):
        await _ring().create("Audit/../x")


async def test_rotation_makes_a_new_current_key_and_keeps_the_old() -> None:
    ring = _ring()
    old = await ring.create("audit")
    new = await ring.rotate("audit")
    assert new.kid != old.kid
    assert (await ring.current("audit")).kid == new.kid
    assert (await ring.key("audit", old.kid)).kid == old.kid
    listed = {(i.kid, i.current) for i in await ring.list()}
    assert listed == {(old.kid, False), (new.kid, True)}


async def test_rotation_elsewhere_is_seen_after_the_cache_ttl() -> None:
    store, kms, clock = MemoryKeyStore(), LocalKms.generate(), _Clock()
    here = _ring(store, kms, clock=clock, cache_ttl=60.0)
    there = _ring(store, kms)
    old = await here.create("audit")
    assert (await here.current("audit")).kid == old.kid
    new = await there.rotate("audit")
    assert (await here.current("audit")).kid == old.kid  # cached
    clock.now += 61
    assert (await here.current("audit")).kid == new.kid
    # A key id this process has not seen yet is looked up again rather than refused.
    newer = await there.rotate("audit")
    assert (await here.key("audit", newer.kid)).kid == newer.kid


async def test_ensure_creates_once_and_keeps_the_size() -> None:
    ring = _ring()
    first = await ring.ensure("blind-index", size=32)
    assert len(first.material) == 32
    assert (await ring.ensure("blind-index", size=32)).kid == first.kid


async def test_wrapped_key_moved_to_another_purpose_does_not_unwrap() -> None:
    store = MemoryKeyStore()
    ring = _ring(store)
    await ring.create("audit")
    await ring.create("state")
    audit = json.loads(await store.get("purpose/audit") or b"")
    state = json.loads(await store.get("purpose/state") or b"")
    state["keys"] = {audit["current"]: audit["keys"][audit["current"]]}
    state["current"] = audit["current"]
    await store.put("purpose/state", json.dumps(state).encode())
    ring.forget(purpose="state")
    with pytest.raises(KeyUnwrapError):
        await ring.current("state")


# -- customer keys and erasure -----------------------------------------------------------


async def test_customer_key_is_created_on_first_use_and_kept() -> None:
    store, kms = MemoryKeyStore(), LocalKms.generate()
    key = await _ring(store, kms).customer_key("alice")
    again = await _ring(store, kms).customer_key("alice")  # another process, same store
    assert again.kid == key.kid and again.material == key.material
    assert (await _ring(store, kms).customer_key("bob")).material != key.material


async def test_concurrent_first_use_in_two_processes_agrees_on_one_key() -> None:
    store, kms = _YieldingStore(), LocalKms.generate()
    a, b = _ring(store, kms), _ring(store, kms)
    ka, kb = await asyncio.gather(a.customer_key("alice"), b.customer_key("alice"))
    assert ka.kid == kb.kid and ka.material == kb.material


async def test_erase_customer_destroys_the_wrapped_key() -> None:
    store = MemoryKeyStore()
    ring = _ring(store)
    key = await ring.customer_key("alice")
    assert await ring.erase_customer("alice") is True
    record = (await store.get("customer/alice")) or b""
    assert b"wrapped" not in record and "erased" in json.loads(record)
    with pytest.raises(KeyErased, match="alice"):
        await ring.existing_customer_key("alice", key.kid)
    with pytest.raises(KeyErased):  # nothing new is sealed for them either
        await ring.customer_key("alice")


async def test_erasure_elsewhere_is_seen_after_the_ttl_or_forget() -> None:
    store, kms, clock = MemoryKeyStore(), LocalKms.generate(), _Clock()
    here = _ring(store, kms, clock=clock, cache_ttl=30.0)
    key = await here.customer_key("alice")
    await _ring(store, kms).erase_customer("alice")
    assert (await here.existing_customer_key("alice", key.kid)).kid == key.kid  # still cached
    here.forget(sub="alice")
    with pytest.raises(KeyErased):
        await here.existing_customer_key("alice", key.kid)
    key_b = await here.customer_key("bob")
    await _ring(store, kms).erase_customer("bob")
    clock.now += 31
    with pytest.raises(KeyErased):
        await here.existing_customer_key("bob", key_b.kid)


async def test_customer_without_a_key_is_key_not_found() -> None:
    with pytest.raises(KeyNotFound, match="carol"):
        await _ring().existing_customer_key("carol")


async def test_wrapped_customer_key_copied_to_another_customer_does_not_unwrap() -> None:
    store = MemoryKeyStore()
    ring = _ring(store)
    await ring.customer_key("alice")
    await store.put("customer/mallory", (await store.get("customer/alice")) or b"")
    with pytest.raises(KeyUnwrapError):
        await ring.customer_key("mallory")


async def test_customer_cache_is_bounded() -> None:
    store, kms = MemoryKeyStore(), LocalKms.generate()
    ring = _ring(store, kms, cache_size=2)
    for sub in ("a", "b", "c"):
        await ring.customer_key(sub)
    assert "cached=2" in repr(ring)


# -- no key material where it could leak ------------------------------------------------------


async def test_no_key_material_in_repr_str_or_pickle(tmp_path: Path) -> None:
    kms = LocalKms.from_file(tmp_path / "master.json", create=True)
    ring = KeyRing(kms, FileKeyStore(tmp_path / "keys.json"))
    key = await ring.customer_key("alice")
    master = json.loads((tmp_path / "master.json").read_text())["keys"]
    secrets_ = [key.material.hex(), base64.b64encode(key.material).decode(), repr(key.material),
                *master.values()]
    for obj in (key, kms, ring, await ring.ensure("audit")):
        for text in (repr(obj), str(obj)):
            assert not any(s in text for s in secrets_), text
    for obj in (key, kms, ring):
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    assert isinstance(key, DataKey) and "alice" in repr(key)


# -- portcullis keys ----------------------------------------------------------------------------


def _keys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    files = ["--master-file", str(tmp_path / "master.json"), "--store", str(tmp_path / "keyring.json")]
    return subprocess.run([sys.executable, "-m", "gateway", "keys", *args, *files], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_cli_init_creates_a_0600_master_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    first = _keys(tmp_path, "init")
    assert first.returncode == 0, first.stderr
    assert _mode(tmp_path / "master.json") == 0o600
    before = (tmp_path / "master.json").read_bytes()
    again = _keys(tmp_path, "init")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr
    assert (tmp_path / "master.json").read_bytes() == before


def test_cli_create_rotate_list_and_no_key_material_printed(tmp_path: Path) -> None:
    outputs = [_keys(tmp_path, "init"), _keys(tmp_path, "create", "--purpose", "blind-index", "--size", "32"),
               _keys(tmp_path, "rotate", "--purpose", "blind-index"), _keys(tmp_path, "create", "--purpose", "audit")]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0], [o.stderr for o in outputs]
    listed = _keys(tmp_path, "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(r[0], r[2], r[4:]) for r in rows] == [("audit", "16", ["yes"]), ("blind-index", "32", []),
                                                  ("blind-index", "32", ["yes"])]
    assert _mode(tmp_path / "keyring.json") == 0o600
    # Nothing the command printed holds a key: the master key, or a wrapped or unwrapped data key.
    kms = LocalKms.from_file(tmp_path / "master.json")
    ring = KeyRing(kms, FileKeyStore(tmp_path / "keyring.json"))
    material = [k.material for p in ("audit", "blind-index") for k in asyncio.run(ring.keys(p))]
    master = json.loads((tmp_path / "master.json").read_text())["keys"]
    stored = [v for v in json.loads((tmp_path / "keyring.json").read_text()).values()]
    printed = "".join(o.stdout + o.stderr for o in [*outputs, listed])
    for secret in [*master.values(), *stored, *(m.hex() for m in material),
                   *(base64.b64encode(m).decode() for m in material)]:
        assert secret not in printed


def test_cli_erase_customer_needs_yes_and_then_erases(tmp_path: Path) -> None:
    assert _keys(tmp_path, "init").returncode == 0
    ring = KeyRing(LocalKms.from_file(tmp_path / "master.json"), FileKeyStore(tmp_path / "keyring.json"))
    key = asyncio.run(ring.customer_key("alice"))
    refused = _keys(tmp_path, "erase-customer", "alice")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert asyncio.run(ring.existing_customer_key("alice", key.kid)).kid == key.kid
    done = _keys(tmp_path, "erase-customer", "alice", "--yes")
    assert done.returncode == 0 and "destroyed" in done.stdout
    ring.forget(sub="alice")
    with pytest.raises(KeyErased):
        asyncio.run(ring.existing_customer_key("alice", key.kid))


@pytest.mark.parametrize(("args", "message"), [
    (("list",), "portcullis keys init"),                         # no master key yet
    (("rotate", "--purpose", "audit"), "portcullis keys init"),
])
def test_cli_without_a_master_key_exits_2_naming_the_fix(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = _keys(tmp_path, *args)
    assert out.returncode == 2 and message in out.stderr


def test_cli_config_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    assert _keys(tmp_path, "init").returncode == 0
    missing = _keys(tmp_path, "rotate", "--purpose", "audit")
    assert missing.returncode == 2 and "no keys for purpose 'audit'" in missing.stderr
    bad = _keys(tmp_path, "create", "--purpose", "Bad/Name")
    assert bad.returncode == 2 and "purpose" in bad.stderr
    os.chmod(tmp_path / "master.json", 0o644)
    unsafe = _keys(tmp_path, "list")
    assert unsafe.returncode == 2 and "chmod 600" in unsafe.stderr


def test_cli_master_key_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "DEMO_MASTER": base64.b64encode(os.urandom(32)).decode()}
    out = subprocess.run([sys.executable, "-m", "gateway", "keys", "create", "--purpose", "audit",
                          "--master-env", "DEMO_MASTER", "--store", str(tmp_path / "keyring.json")],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert env["DEMO_MASTER"] not in out.stdout + out.stderr


def test_cli_main_in_process_with_argv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    files = ["--master-file", str(tmp_path / "m.json"), "--store", str(tmp_path / "k.json")]
    assert main(["keys", "init", *files]) == 0
    assert main(["keys", "create", "--purpose", "audit", *files]) == 0
    assert main(["keys", "create", "--purpose", "audit", *files]) == 2
    assert "rotate them instead" in capsys.readouterr().err
