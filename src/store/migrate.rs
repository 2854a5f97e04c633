//! `piqchat-inbox migrate --to postgres://…`: copies every table of a SQLite
//! database into an empty PostgreSQL database (created with the PostgreSQL
//! migrations) in one transaction, then compares row counts table by table.
//! Refuses a target that holds data unless `force`, which empties it first,
//! so a re-run after a failed or partial copy starts over cleanly.

use sqlx::{Connection as _, Row as _, postgres::PgConnection};

use super::{PgTarget, SqliteStore};

/// How a column is read from SQLite and bound for PostgreSQL.
#[derive(Clone, Copy)]
enum Col {
    Int,
    /// SQLite INTEGER into a SMALLINT column.
    Small,
    Text,
    Blob,
}

use Col::{Blob, Int, Small, Text};

/// Every table, parents before children (foreign keys), with its columns.
/// `users` sorts by id, so an inviter is always copied before those invited.
const TABLES: &[(&str, &[(&str, Col)])] = &[
    ("server_config", &[("key", Text), ("value", Blob)]),
    (
        "users",
        &[
            ("id", Int),
            ("public_key", Blob),
            ("invited_by", Int),
            ("created_at", Int),
            ("last_seen_at", Int),
            ("client_version", Text),
            ("deleted_at", Int),
        ],
    ),
    ("contacts", &[("user_id", Int), ("contact_key", Blob)]),
    (
        "exchanges",
        &[
            ("token", Text),
            ("creator_id", Int),
            ("offer", Text),
            ("answer", Text),
            ("accepted_at", Int),
            ("created_at", Int),
            ("expires_at", Int),
        ],
    ),
    (
        "attachments",
        &[("id", Text), ("size", Int), ("created_at", Int)],
    ),
    (
        "parcels",
        &[
            ("seq", Int),
            ("id", Text),
            ("recipient_id", Int),
            ("sender_key", Blob),
            ("type", Text),
            ("content", Text),
            ("attachment_id", Text),
            ("created_at", Int),
        ],
    ),
    (
        "backups",
        &[
            ("user_id", Int),
            ("content", Text),
            ("updated_at", Int),
            ("last_read_at", Int),
        ],
    ),
    (
        "push_subscriptions",
        &[
            ("user_id", Int),
            ("endpoint", Text),
            ("p256dh", Blob),
            ("auth", Blob),
            ("content_encoding", Text),
            ("expires_at", Int),
            ("created_at", Int),
        ],
    ),
    (
        "push_outbox",
        &[
            ("id", Int),
            ("user_id", Int),
            ("payload", Text),
            ("attempts", Int),
            ("next_attempt_at", Int),
            ("expires_at", Int),
            ("created_at", Int),
        ],
    ),
    ("daily_stats", &[("day", Int), ("media_received", Int)]),
    (
        "nonces",
        &[("id", Int), ("key", Int), ("class", Small), ("until", Int)],
    ),
    ("file_removals", &[("id", Text)]),
];

/// Identity columns whose sequences must continue after the copied rows.
const IDENTITIES: &[(&str, &str)] = &[("users", "id"), ("parcels", "seq"), ("push_outbox", "id")];

/// Rows of one table in the source and, after the copy, in the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    pub source: i64,
    pub target: i64,
}

/// Copies the SQLite database at `source` into `target`. Returns the row
/// counts of every table; an error when any differs.
pub async fn copy_sqlite_to_postgres(
    source: &std::path::Path,
    target: &PgTarget,
    force: bool,
) -> anyhow::Result<Vec<TableCount>> {
    if !source.exists() {
        anyhow::bail!("no SQLite database at {} (DATABASE_PATH)", source.display());
    }
    let sqlite = SqliteStore::open(source).await?;
    let copied = copy(&sqlite, target, force).await;
    sqlite.close().await;
    copied
}

async fn copy(
    sqlite: &SqliteStore,
    target: &PgTarget,
    force: bool,
) -> anyhow::Result<Vec<TableCount>> {
    let mut pg = PgConnection::connect_with(&target.connect_options()).await?;
    sqlx::migrate!("./migrations/postgres").run(&mut pg).await?;
    let mut tx = pg.begin().await?;
    let mut holding = Vec::new();
    for (table, _) in TABLES {
        let (n,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?;
        if n > 0 {
            holding.push(format!("{table} ({n})"));
        }
    }
    if !holding.is_empty() {
        if !force {
            anyhow::bail!(
                "the target database holds data ({}); migrate into an empty database, or pass --force to replace it",
                holding.join(", ")
            );
        }
        let all: Vec<&str> = TABLES.iter().map(|(t, _)| *t).collect();
        sqlx::query(&format!("TRUNCATE {} RESTART IDENTITY", all.join(", ")))
            .execute(&mut *tx)
            .await?;
    }
    let mut counts = Vec::new();
    let mut reader = sqlite.reader().await?;
    for (table, cols) in TABLES {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let order = if *table == "users" {
            " ORDER BY id"
        } else {
            ""
        };
        let rows = sqlx::query(&format!("SELECT {} FROM {table}{order}", names.join(", ")))
            .fetch_all(&mut *reader)
            .await?;
        let params: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        for row in &rows {
            let mut query = sqlx::query(&insert);
            for (i, (_, col)) in cols.iter().enumerate() {
                query = match col {
                    Int => query.bind(row.try_get::<Option<i64>, _>(i)?),
                    Small => query.bind(
                        row.try_get::<Option<i64>, _>(i)?
                            .map(|v| i16::try_from(v).unwrap_or(i16::MAX)),
                    ),
                    Text => query.bind(row.try_get::<Option<String>, _>(i)?),
                    Blob => query.bind(row.try_get::<Option<Vec<u8>>, _>(i)?),
                };
            }
            query.execute(&mut *tx).await?;
        }
        let (target,): (i64,) = sqlx::query_as(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&mut *tx)
            .await?;
        counts.push(TableCount {
            table,
            source: rows.len() as i64,
            target,
        });
    }
    drop(reader);
    for (table, column) in IDENTITIES {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', '{column}'), \
             COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    // The maintained totals behind statistics (see the PostgreSQL schema).
    sqlx::query(
        "UPDATE counters SET value = CASE name \
         WHEN 'users' THEN (SELECT COUNT(*) FROM users WHERE public_key IS NOT NULL) \
         WHEN 'media_waiting' THEN (SELECT COUNT(*) FROM parcels WHERE type = 'MEDIA') \
         ELSE value END",
    )
    .execute(&mut *tx)
    .await?;
    let wrong: Vec<String> = counts
        .iter()
        .filter(|c| c.source != c.target)
        .map(|c| format!("{}: {} copied as {}", c.table, c.source, c.target))
        .collect();
    if !wrong.is_empty() {
        tx.rollback().await?;
        anyhow::bail!("row counts differ, nothing was kept: {}", wrong.join("; "));
    }
    tx.commit().await?;
    let _ = pg.close().await;
    Ok(counts)
}
