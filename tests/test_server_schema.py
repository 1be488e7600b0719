"""The engine: schema created on first use, SQLite tuned for durability and concurrency."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from datacat_server import schema


def test_sqlite_engine_creates_the_schema_with_wal_and_foreign_keys(tmp_path: Path) -> None:
    engine = schema.make_engine(f"sqlite:///{tmp_path}/new.db")
    assert set(sa.inspect(engine).get_table_names()) == set(schema.metadata.tables)
    with engine.connect() as conn:
        pragma = conn.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA busy_timeout").scalar() == 10000
    engine.dispose()


def test_creating_twice_keeps_the_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/twice.db"
    first = schema.make_engine(url)
    with first.begin() as conn:
        conn.execute(
            schema.applied_ops.insert(),
            {"op_id": "00000000-0000-0000-0000-000000000000", "applied_at": 1.0},
        )
    first.dispose()
    again = schema.make_engine(url)
    with again.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).select_from(schema.applied_ops)).scalar() == 1
        )
    again.dispose()


def test_an_older_database_gets_the_new_columns_and_indexes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    old = schema.make_engine(url)
    with old.begin() as conn:  # as the previous version left it
        for index in ("ux_events_op_id", "ux_metrics_op_id", "ix_events_name"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for table in ("events", "metrics"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN op_id")
    old.dispose()
    upgraded = schema.make_engine(url)
    inspector = sa.inspect(upgraded)
    for table in ("events", "metrics"):
        assert "op_id" in {c["name"] for c in inspector.get_columns(table)}
    indexes = {i["name"] for t in ("events", "metrics") for i in inspector.get_indexes(t)}
    assert {"ux_events_op_id", "ux_metrics_op_id", "ix_events_name"} <= indexes
    upgraded.dispose()


@pytest.mark.parametrize(
    "url,expected",
    [
        ("postgresql://u@h:5/db", "postgresql+psycopg://u@h:5/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_postgresql_urls_use_psycopg_3(url: str, expected: str) -> None:
    assert schema.engine_url(url) == expected
    assert sa.create_engine(schema.engine_url(url)).dialect.name in ("postgresql", "sqlite")
