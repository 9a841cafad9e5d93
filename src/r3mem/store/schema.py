"""Tables of the persistent memory store (SQLAlchemy 2.x declarative).

Layout: users → sessions → turns (→ the revisions an edit replaced), and per session at most one
current memory (an opaque blob written by the model side) with its ordered slot metadata.

Every child row carries the full owner key (``user_id``, ``session_id``) and a
foreign key with ``ON DELETE CASCADE``: deleting a user or a session removes
everything below it in one statement, on SQLite and PostgreSQL alike, and no
query can reach another user's rows by session id alone.

This module describes the *latest* schema. Existing databases are brought to it
by :mod:`r3mem.store.migrations`; change both together (a test compares them).
"""

from typing import Any

from sqlalchemy import (
    JSON,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LENGTH = 255
"""Longest user or session id; bounded so that PostgreSQL and SQLite agree."""

# Deterministic constraint names keep future migrations (which must name what they alter) portable.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base sharing one metadata with a fixed naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SchemaVersionRow(Base):
    """Single row (``id = 1``) recording which migrations have been applied."""

    __tablename__ = "schema_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)


class UserRow(Base):
    """A user. Only a sha256 hex digest of the API token is kept, never the token."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    created_at: Mapped[float] = mapped_column(Double, nullable=False)


class SessionRow(Base):
    """A conversation of one user; ``turn_count`` doubles as the turn-index allocator."""

    __tablename__ = "sessions"

    user_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("users.user_id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    created_at: Mapped[float] = mapped_column(Double, nullable=False)
    updated_at: Mapped[float] = mapped_column(Double, nullable=False)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    turn_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)


class TurnRow(Base):
    """One utterance; ``idx`` is 1-based and increasing within its session (a deleted turn leaves a gap)."""

    __tablename__ = "turns"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "session_id"],
            ["sessions.user_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
    )

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    speaker: Mapped[str] = mapped_column(String(64), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[float] = mapped_column(Double, nullable=False)


class TurnRevisionRow(Base):
    """What an edit replaced: the turn's earlier speaker and text, when it was said and when it was
    replaced. Deleting the turn deletes its revisions too (a forgotten turn leaves no text behind)."""

    __tablename__ = "turn_revisions"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "session_id", "idx"],
            ["turns.user_id", "turns.session_id", "turns.idx"],
            ondelete="CASCADE",
        ),
    )

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    rev: Mapped[int] = mapped_column(Integer, primary_key=True)
    speaker: Mapped[str] = mapped_column(String(64), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    timestamp: Mapped[float] = mapped_column(Double, nullable=False)
    replaced_at: Mapped[float] = mapped_column(Double, nullable=False)


class MemoryRow(Base):
    """The current memory of a session: opaque blob plus bookkeeping for optimistic locking.

    An empty blob is a reset memory (an edit or delete of a turn it covered): it holds nothing and
    covers no turn, but keeps the version counting, so a writer that began before the reset conflicts
    instead of storing a memory of the old text."""

    __tablename__ = "memories"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "session_id"],
            ["sessions.user_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
    )

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    blob: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    # Checked on read so that storage-level corruption surfaces as a clear error, not a bad model load.
    blob_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    through_turn: Mapped[int] = mapped_column(Integer, nullable=False)
    updated_at: Mapped[float] = mapped_column(Double, nullable=False)


class SlotRow(Base):
    """Metadata of one memory slot; ``ordinal`` keeps the model's slot order."""

    __tablename__ = "slots"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "session_id"],
            ["memories.user_id", "memories.session_id"],
            ondelete="CASCADE",
        ),
    )

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(64), nullable=False)
    slot_key: Mapped[str] = mapped_column(Text, nullable=False)
    start_pos: Mapped[int] = mapped_column(Integer, nullable=False)
    end_pos: Mapped[int] = mapped_column(Integer, nullable=False)
    turn_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    timestamp: Mapped[float | None] = mapped_column(Double, nullable=True)


metadata = Base.metadata
schema_version = SchemaVersionRow.__table__
users = UserRow.__table__
sessions = SessionRow.__table__
turns = TurnRow.__table__
turn_revisions = TurnRevisionRow.__table__
memories = MemoryRow.__table__
slots = SlotRow.__table__
