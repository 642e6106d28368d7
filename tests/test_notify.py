"""Notifiers write exactly one JSON line per notification, and only to their sink."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from gateway.config import NotifierConfig
from gateway.notify import (
    ConsoleNotifier,
    FileNotifier,
    MemoryNotifier,
    Notification,
    Notifier,
    build_notifier,
)


def epoch() -> float:
    return 0.0


def lines(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_console_notifier_writes_one_json_line_per_notification() -> None:
    stream = io.StringIO()
    notifier = ConsoleNotifier(stream, clock=epoch)
    await notifier.notify("factor_enrolled", "alice", "A new factor was enrolled",
                          {"method": "totp", "device": "d1"})
    await notifier.notify("account_frozen", "compliance", "Account A1 frozen")
    assert lines(stream.getvalue()) == [
        {"ts": "1970-01-01T00:00:00.000Z", "kind": "factor_enrolled", "recipient": "alice",
         "message": "A new factor was enrolled", "fields": {"method": "totp", "device": "d1"}},
        {"ts": "1970-01-01T00:00:00.000Z", "kind": "account_frozen", "recipient": "compliance",
         "message": "Account A1 frozen", "fields": {}},
    ]


async def test_console_notifier_defaults_to_the_current_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    await ConsoleNotifier().notify("account_frozen", "bob", "frozen")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert lines(captured.err)[0]["recipient"] == "bob"


async def test_a_newline_in_a_message_stays_inside_its_line() -> None:
    stream = io.StringIO()
    await ConsoleNotifier(stream).notify("k", "r", "two\nlines", {"x": "a\nb"})
    [record] = lines(stream.getvalue())
    assert (record["message"], record["fields"]) == ("two\nlines", {"x": "a\nb"})


async def test_non_ascii_text_is_written_as_utf8(tmp_path: Path) -> None:
    path = tmp_path / "n.jsonl"
    await FileNotifier(path).notify("account_frozen", "张三", "账户已冻结")
    text = path.read_bytes().decode("utf-8")
    assert "张三" in text and "账户已冻结" in text


async def test_file_notifier_creates_folders_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "var" / "notify" / "alerts.jsonl"
    first = FileNotifier(path, clock=epoch)
    await first.notify("factor_enrolled", "alice", "one")
    await FileNotifier(path, clock=epoch).notify("factor_enrolled", "alice", "two")
    assert [r["message"] for r in lines(path.read_text("utf-8"))] == ["one", "two"]


async def test_file_notifier_keeps_the_file_private(tmp_path: Path) -> None:
    path = tmp_path / "private" / "alerts.jsonl"
    await FileNotifier(path).notify("k", "alice", "personal data")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


async def test_file_notifier_keeps_call_order_under_concurrency(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    notifier = FileNotifier(path)
    await asyncio.gather(*(notifier.notify("k", f"user{i}", "m") for i in range(50)))
    assert [r["recipient"] for r in lines(path.read_text("utf-8"))] == [
        f"user{i}" for i in range(50)
    ]


async def test_file_notifier_write_failure_reaches_the_caller(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        await FileNotifier(tmp_path).notify("k", "r", "m")


async def test_notifications_never_reach_the_application_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await ConsoleNotifier(io.StringIO()).notify("k", "alice", "secret-ish", {"acct": "A1"})
    await FileNotifier(tmp_path / "n.jsonl").notify("k", "alice", "secret-ish", {"acct": "A1"})
    assert caplog.records == []


async def test_memory_notifier_records_what_was_sent() -> None:
    notifier = MemoryNotifier(clock=epoch)
    await notifier.notify("account_frozen", "bob", "frozen", {"account": "B9"})
    assert notifier.sent == [Notification(0.0, "account_frozen", "bob", "frozen",
                                          {"account": "B9"})]


def test_every_notifier_satisfies_the_protocol(tmp_path: Path) -> None:
    for notifier in (ConsoleNotifier(), FileNotifier(tmp_path / "n"), MemoryNotifier()):
        assert isinstance(notifier, Notifier)


def test_build_notifier_picks_the_configured_sink(tmp_path: Path) -> None:
    assert isinstance(build_notifier(NotifierConfig()), ConsoleNotifier)
    built = build_notifier(NotifierConfig(sink="file", path=tmp_path / "n.jsonl"))
    assert isinstance(built, FileNotifier)
    assert built.path == tmp_path / "n.jsonl"


def test_build_notifier_refuses_a_file_sink_without_a_path() -> None:
    with pytest.raises(ValueError, match="notifier.path"):
        build_notifier(NotifierConfig(sink="file"))
