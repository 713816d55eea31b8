"""The disk store's database file in its folder: opening it safely, and moving a damaged one aside.

``open_cache`` checks an existing ``cache.db`` for damage (``PRAGMA quick_check``) and drops unknown
keys from diskcache's Settings table (diskcache applies them blindly) before opening it with
``SafeDisk`` (storage/safe_disk.py), then installs the store's schema and removes what an older
layout left. ``is_corrupt`` tells damage ("file is not a database", "malformed", a failed check)
from other SQLite errors; ``quarantine`` moves the damaged files aside as ``cache.db.corrupt-<time>``
(the newest two are kept). ``DiskStore`` (storage/disk.py) decides when to call them.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

import diskcache
from diskcache.core import DBNAME, DEFAULT_SETTINGS, METADATA

from storage import disk_rows
from storage.safe_disk import MIN_FILE_SIZE, VALUE_DIR, SafeDisk

log = logging.getLogger(__name__)

SQLITE_TIMEOUT_S = 10  # how long a writer waits for another process holding the lock
CORRUPT_COPIES_KEPT = 2  # damaged databases kept for inspection (newest first)
LEGACY_ALIAS_DIR = "aliases"  # the alias database of the single-namespace layout (EditX <= 0.2)
_OUR_SETTINGS = ("sqlite_journal_size_limit", "sqlite_wal_autocheckpoint")
_KNOWN_SETTINGS = tuple(DEFAULT_SETTINGS) + tuple(METADATA) + _OUR_SETTINGS


class CorruptDatabase(sqlite3.DatabaseError):
    """``PRAGMA quick_check`` found damage."""


def is_corrupt(exc: BaseException) -> bool:
    """Whether ``exc`` says the database file is damaged (not merely locked, read-only or full)."""
    if isinstance(exc, CorruptDatabase):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def close_quietly(cache: diskcache.Cache | None) -> None:
    if cache is None:
        return
    try:
        cache.close()
    except Exception:  # noqa: BLE001 - the handle is being dropped because it failed
        pass


def open_cache(directory: Path, max_bytes: int, wal_limit: int) -> diskcache.Cache:
    """Open (or create) the database in ``directory`` with the store's settings and schema.

    Raises what SQLite, diskcache and the OS raise (``CorruptDatabase`` when the check fails); the
    handle is closed then.
    """
    cache = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _preflight(directory / DBNAME)
        cache = diskcache.Cache(
            str(directory),
            timeout=SQLITE_TIMEOUT_S,
            disk=SafeDisk,
            eviction_policy="least-recently-used",
            cull_limit=0,
            size_limit=max_bytes,
            statistics=0,
            tag_index=0,
            sqlite_journal_size_limit=wal_limit,
            sqlite_wal_autocheckpoint=max(16, wal_limit // 2 // 4096),
            disk_min_file_size=MIN_FILE_SIZE,
            disk_pickle_protocol=0,
        )
        _prepare(cache, directory)
    except (sqlite3.Error, OSError, diskcache.Timeout):
        close_quietly(cache)
        raise
    return cache


def _preflight(db_path: Path) -> None:
    """Check an existing database for damage and drop Settings rows diskcache would apply blindly."""
    if not db_path.exists():
        return
    con = sqlite3.connect(str(db_path), timeout=SQLITE_TIMEOUT_S, isolation_level=None)
    try:
        row = con.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise CorruptDatabase(f"quick_check: {row[0] if row else 'no answer'}")
        marks = ",".join("?" * len(_KNOWN_SETTINGS))
        try:
            con.execute(f"DELETE FROM Settings WHERE key NOT IN ({marks})", _KNOWN_SETTINGS)
        except sqlite3.OperationalError:  # no table yet, or locked / read-only: diskcache decides
            pass
    finally:
        con.close()


def _prepare(cache: diskcache.Cache, directory: Path) -> None:
    """Our schema; rows of the old single-namespace layout removed; counts rebuilt from the rows
    (``disk_rows.install_schema``); the alias database of that layout deleted."""
    removed = disk_rows.install_schema(cache)
    legacy = directory / LEGACY_ALIAS_DIR
    legacy_aliases = (legacy / DBNAME).exists()
    if legacy_aliases:
        shutil.rmtree(legacy, ignore_errors=True)
    if removed or legacy_aliases:
        log.info(
            "cache store: removed %d entries of an older cache layout in %s (made again as used)",
            removed,
            directory,
        )


def quarantine(directory: Path, exc: BaseException) -> None:
    """Move a damaged database aside (kept for inspection) so a fresh one can start."""
    db_path = directory / DBNAME
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = directory / f"{DBNAME}.corrupt-{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{DBNAME}.corrupt-{stamp}-{n}"
    try:
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{db_path}{suffix}")
            if source.exists():
                os.replace(source, f"{target}{suffix}")
        for child in directory.iterdir():  # value files of the old database: unreachable now
            if child.is_dir() and VALUE_DIR.fullmatch(child.name):
                shutil.rmtree(child, ignore_errors=True)
        copies = sorted(
            p for p in directory.glob(f"{DBNAME}.corrupt-*") if not p.name.endswith(("-wal", "-shm"))
        )
        for old in copies[:-CORRUPT_COPIES_KEPT]:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{old}{suffix}").unlink(missing_ok=True)
    except OSError as move_error:
        log.warning(
            "cache store: the database in %s is damaged (%s) and could not be moved aside (%s)",
            directory,
            exc,
            move_error,
        )
        return
    log.warning(
        "cache store: the database in %s was damaged (%s); moved it aside as %s and started "
        "an empty one. Entries are made again as they are used; delete %s once inspected.",
        directory,
        exc,
        target.name,
        target.name,
    )
