"""TRUNCATE of the audit log fails too (Postgres): a statement-level ``BEFORE TRUNCATE`` trigger on the audit
rows and the checkpoints, beside the row triggers of 0002. It also fires when the audit tables are reached
through ``TRUNCATE … CASCADE`` or named among other tables.

Like the row triggers it binds the application role, not a superuser: ``session_replication_role = replica``
(superuser-only) switches it off, which is how the test runner's flush empties the database. SQLite has no
TRUNCATE (its ``DELETE FROM`` is refused by the row triggers of 0002).
"""

from __future__ import annotations

from django.db import migrations

TABLES = ("escrow_auditentry", "escrow_auditcheckpoint")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION escrow_audit_no_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'escrow audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
"""


def install(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(POSTGRES_FUNCTION)
        for table in TABLES:
            cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
            cursor.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION escrow_audit_no_truncate()"
            )


def uninstall(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        cursor.execute("DROP FUNCTION IF EXISTS escrow_audit_no_truncate()")


class Migration(migrations.Migration):
    dependencies = [("escrow", "0002_audit_append_only")]
    operations = [migrations.RunPython(install, uninstall)]
