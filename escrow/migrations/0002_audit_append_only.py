"""Database-level protection of the audit log: UPDATE and DELETE of audit rows and checkpoints fail.

Postgres: row triggers raise (TRUNCATE is refused by the statement trigger of 0003). SQLite (the embedded
default): row triggers abort. Neither stops a database superuser, which is why signed checkpoints are
exported outside it.
"""

from __future__ import annotations

from django.db import migrations

TABLES = ("escrow_auditentry", "escrow_auditcheckpoint")

POSTGRES_FUNCTION = """
CREATE OR REPLACE FUNCTION escrow_audit_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'escrow audit log is append-only (% on %)', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$ LANGUAGE plpgsql;
"""


def install(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute(POSTGRES_FUNCTION)
            for table in TABLES:
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
                cursor.execute(
                    f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                    "FOR EACH ROW EXECUTE FUNCTION escrow_audit_append_only()"
                )
        elif vendor == "sqlite":
            for table in TABLES:
                for op in ("UPDATE", "DELETE"):
                    name = f"{table}_no_{op.lower()}"
                    cursor.execute(f"DROP TRIGGER IF EXISTS {name}")
                    cursor.execute(
                        f"CREATE TRIGGER {name} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, 'escrow audit log is append-only'); END"
                    )


def uninstall(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    with schema_editor.connection.cursor() as cursor:
        for table in TABLES:
            if vendor == "postgresql":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            elif vendor == "sqlite":
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
                cursor.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        if vendor == "postgresql":
            cursor.execute("DROP FUNCTION IF EXISTS escrow_audit_append_only()")


class Migration(migrations.Migration):
    dependencies = [("escrow", "0001_initial")]
    operations = [migrations.RunPython(install, uninstall)]
