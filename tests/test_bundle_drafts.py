"""Drafts in the bundle repository (the console's editing): memory and real PostgreSQL, the same rules.

A save names the revision it was based on; a save based on an older revision stores nothing.
"""

from __future__ import annotations

import asyncio

import pytest
from bundles import tiny_bundle

from gateway.bundles.files import BundleFiles, identity
from gateway.bundles.repository import BundleRepository, NewBundle
from gateway.errors import GatewayError


async def _base(repo: BundleRepository) -> str:
    files = tiny_bundle(rev=1)
    ident = identity(BundleFiles(files))
    await repo.add(NewBundle(version=ident.version, digest=ident.digest, files_digest=ident.files_digest,
                             files=files, description="base", uploaded_by="carol", uploaded_at=1000.0))
    return ident.version


async def test_a_draft_keeps_its_base_files_byte_for_byte(repo: BundleRepository) -> None:
    base = await _base(repo)
    files = {**tiny_bundle(rev=1), "notes.rego": "package notes\n# 中文 \t\r\n"}
    info = await repo.create_draft(base, files, by="carol", at=2000.0)
    got = await repo.draft(info.id)
    assert got is not None and dict(got.files) == files
    assert (got.info.base_version, got.info.revision, got.info.file_count) == (base, 1, 4)
    assert got.info.size == BundleFiles(files).size and got.info.updated_by == "carol"
    assert await repo.draft(info.id + 1000) is None


async def test_a_draft_of_an_unknown_version_is_refused(repo: BundleRepository) -> None:
    with pytest.raises(GatewayError, match="no bundle has version"):
        await repo.create_draft("0" * 16, tiny_bundle(), by="carol", at=1.0)


async def test_a_save_based_on_an_old_revision_stores_nothing(repo: BundleRepository) -> None:
    info = await repo.create_draft(None, {"a.rego": "package a\n"}, by="carol", at=1.0)
    first = await repo.save_draft(info.id, {"a.rego": "package a\n# carol\n"}, revision=1, by="carol", at=2.0)
    second = await repo.save_draft(info.id, {"a.rego": "package a\n# dave\n"}, revision=1, by="dave", at=3.0)
    got = await repo.draft(info.id)
    assert first is not None and first.revision == 2 and second is None
    assert got is not None and got.files == {"a.rego": "package a\n# carol\n"} and got.info.updated_by == "carol"
    assert await repo.save_draft(info.id + 1000, {}, revision=1, by="dave", at=4.0) is None


async def test_concurrent_saves_of_one_revision_store_exactly_one(repo: BundleRepository) -> None:
    info = await repo.create_draft(None, {"a.rego": "package a\n"}, by="carol", at=1.0)
    results = await asyncio.gather(*(repo.save_draft(info.id, {"a.rego": f"package a\n# {i}\n"}, revision=1,
                                                     by=f"officer{i}", at=2.0) for i in range(5)))
    assert sum(r is not None for r in results) == 1


async def test_a_check_belongs_to_the_revision_checked(repo: BundleRepository) -> None:
    info = await repo.create_draft(None, {"a.rego": "package a\n"}, by="carol", at=1.0)
    checked = await repo.record_draft_check(info.id, revision=1, version="a" * 16)
    saved = await repo.save_draft(info.id, {"a.rego": "package a\n\n"}, revision=1, by="carol", at=2.0)
    late = await repo.record_draft_check(info.id, revision=1, version="b" * 16)
    assert checked is not None and checked.checked_version == "a" * 16
    assert saved is not None and saved.checked_version is None and late is None


async def test_drafts_are_listed_most_recently_changed_first(repo: BundleRepository) -> None:
    one = await repo.create_draft(None, {"a.rego": "package a\n"}, by="carol", at=1.0)
    two = await repo.create_draft(None, {"b.rego": "package b\n"}, by="dave", at=2.0)
    await repo.save_draft(one.id, {"a.rego": "package a\n\n"}, revision=1, by="carol", at=3.0)
    assert [d.id for d in await repo.drafts()] == [one.id, two.id]


async def test_a_discard_is_a_compare_and_set_and_ids_are_never_reused(repo: BundleRepository) -> None:
    one = await repo.create_draft(None, {"a.rego": "package a\n"}, by="carol", at=1.0)
    await repo.save_draft(one.id, {"a.rego": "package a\n# carol\n"}, revision=1, by="carol", at=2.0)
    assert not await repo.discard_draft(one.id, revision=1)  # dave saw revision 1: carol saved since
    assert (await repo.draft(one.id)) is not None
    assert await repo.discard_draft(one.id, revision=2)
    assert await repo.draft(one.id) is None and not await repo.discard_draft(one.id, revision=2)
    two = await repo.create_draft(None, {"b.rego": "package b\n"}, by="dave", at=3.0)
    assert two.id != one.id and [d.id for d in await repo.drafts()] == [two.id]
