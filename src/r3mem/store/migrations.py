"""Versioned schema migrations, applied when a :class:`~r3mem.store.MemoryStore` opens.

The ``schema_version`` table holds one row with the number of the last applied
migration. ``MIGRATIONS`` is ordered; each entry upgrades from ``version - 1`` to
``version`` and runs inside the caller's write transaction, so a failed upgrade
leaves the previous version intact (SQLite and PostgreSQL both have transactional DDL).

A migration describes the schema *as it was at that version* and never imports the
live tables of :mod:`r3mem.store.schema`: otherwise editing ``schema.py`` would silently
change what an old migration creates. To change the schema, edit ``schema.py`` *and*
append a migration; ``tests/test_store.py`` checks that a migrated database matches
``schema.py``.

A store stamped with a version newer than ``LATEST`` was written by a newer r3mem; it
is refused (:class:`~r3mem.store.SchemaTooNew`) rather than risk misreading it.
"""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    JSON,
    Column,
    Connection,
    Double,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    inspect,
    select,
    text,
)

from r3mem.store import schema
from r3mem.store.records import SchemaTooNew, StoreError

# Arbitrary constant: the key of the PostgreSQL advisory lock that serialises concurrent upgrades.
_PG_LOCK_KEY = 0x5233_4D45  # "R3ME"


@dataclass(frozen=True)
class Migration:
    """One step of the schema history."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_initial(conn: Connection) -> None:
    """Create the version-1 tables (a frozen copy of the schema at version 1)."""
    md = MetaData(naming_convention=schema.NAMING_CONVENTION)

    def owner() -> list[Column]:
        return [Column("user_id", String(255), primary_key=True), Column("session_id", String(255), primary_key=True)]

    def fk(parent: str) -> ForeignKeyConstraint:
        return ForeignKeyConstraint(
            ["user_id", "session_id"], [f"{parent}.user_id", f"{parent}.session_id"], ondelete="CASCADE"
        )

    Table(
        "users", md,
        Column("user_id", String(255), primary_key=True),
        Column("token_hash", String(64), unique=True, nullable=True),
        Column("created_at", Double, nullable=False),
    )
    Table(
        "sessions", md,
        Column("user_id", String(255), primary_key=True),
        Column("session_id", String(255), primary_key=True),
        Column("created_at", Double, nullable=False),
        Column("updated_at", Double, nullable=False),
        Column("meta", JSON, nullable=False),
        Column("turn_count", Integer, nullable=False),
        ForeignKeyConstraint(["user_id"], ["users.user_id"], ondelete="CASCADE"),
    )
    Table(
        "turns", md, *owner(),
        Column("idx", Integer, primary_key=True),
        Column("speaker", String(64), nullable=False),
        Column("text", Text, nullable=False),
        Column("timestamp", Double, nullable=False),
        fk("sessions"),
    )
    Table(
        "memories", md, *owner(),
        Column("blob", LargeBinary, nullable=False),
        Column("blob_sha256", String(64), nullable=False),
        Column("version", Integer, nullable=False),
        Column("through_turn", Integer, nullable=False),
        Column("updated_at", Double, nullable=False),
        fk("sessions"),
    )
    Table(
        "slots", md, *owner(),
        Column("ordinal", Integer, primary_key=True),
        Column("level", String(64), nullable=False),
        Column("slot_key", Text, nullable=False),
        Column("start_pos", Integer, nullable=False),
        Column("end_pos", Integer, nullable=False),
        Column("turn_id", Integer, nullable=True),
        Column("text", Text, nullable=True),
        Column("timestamp", Double, nullable=True),
        fk("memories"),
    )
    md.create_all(conn)


def _v2_turn_revisions(conn: Connection) -> None:
    """The history of edited turns (a frozen copy of the table at version 2)."""
    md = MetaData(naming_convention=schema.NAMING_CONVENTION)
    Table("turns", md, Column("user_id", String(255), primary_key=True),
          Column("session_id", String(255), primary_key=True), Column("idx", Integer, primary_key=True))
    Table(
        "turn_revisions", md,
        Column("user_id", String(255), primary_key=True),
        Column("session_id", String(255), primary_key=True),
        Column("idx", Integer, primary_key=True),
        Column("rev", Integer, primary_key=True),
        Column("speaker", String(64), nullable=False),
        Column("text", Text, nullable=False),
        Column("timestamp", Double, nullable=False),
        Column("replaced_at", Double, nullable=False),
        ForeignKeyConstraint(["user_id", "session_id", "idx"], ["turns.user_id", "turns.session_id", "turns.idx"],
                             ondelete="CASCADE"),
    )
    md.tables["turn_revisions"].create(conn)


MIGRATIONS: list[Migration] = [
    Migration(1, "initial schema: users, sessions, turns, memories, slots", _v1_initial),
    Migration(2, "turn_revisions: what edits of turns replaced", _v2_turn_revisions),
]
LATEST: int = MIGRATIONS[-1].version


def current_version(conn: Connection) -> int:
    """Return the applied schema version; 0 for an empty database.

    A database holding our tables but no version row is refused: guessing its version
    could run a migration over data it does not match.
    """
    names = set(inspect(conn).get_table_names())
    if schema.schema_version.name not in names:
        if schema.users.name in names:
            raise StoreError("database has r3mem tables but no schema_version row; refusing to guess its version")
        return 0
    found = conn.execute(select(schema.schema_version.c.version).where(schema.schema_version.c.id == 1))
    return int(found.scalar_one_or_none() or 0)


def check_not_newer(found: int, where: str) -> None:
    """Refuse a store written by a newer r3mem (its data could be misread or damaged)."""
    if found > LATEST:
        raise SchemaTooNew(
            f"store {where} has schema version {found}, newer than the {LATEST} this r3mem supports; upgrade r3mem"
        )


def upgrade(conn: Connection, where: str, target: int | None = None) -> int:
    """Apply pending migrations up to ``target`` (default: latest) inside ``conn``'s transaction.

    Concurrent openers are serialised (SQLite: the caller's ``BEGIN IMMEDIATE``;
    PostgreSQL: an advisory lock), and the version is re-read under that lock so each
    migration runs exactly once. Returns the version now stamped.
    """
    target = LATEST if target is None else target
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    found = current_version(conn)
    check_not_newer(found, where)
    if found >= target:
        return found
    if found == 0:
        schema.schema_version.create(conn, checkfirst=True)
    for migration in MIGRATIONS:
        if found < migration.version <= target:
            migration.apply(conn)
    _stamp(conn, target, fresh=found == 0)
    return target


def _stamp(conn: Connection, version: int, fresh: bool) -> None:
    """Record ``version`` as applied."""
    table = schema.schema_version
    if fresh:
        conn.execute(table.insert().values(id=1, version=version))
    else:
        conn.execute(table.update().where(table.c.id == 1).values(version=version))
