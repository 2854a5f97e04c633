-- Initial schema. Times are unix milliseconds (UTC); user ids are the 32 raw
-- bytes of the Ed25519 public key.

-- Server-wide secrets and settings, e.g. the server's key pairs.
CREATE TABLE server_config (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Registered users. A deleted account keeps its row with the key and every
-- personal value blanked, so that invited_by links of others keep their shape.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    public_key     BLOB UNIQUE,
    invited_by     INTEGER REFERENCES users (id) ON DELETE SET NULL,
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER,
    client_version TEXT,
    deleted_at     INTEGER
);
CREATE INDEX users_invited_by ON users (invited_by);
CREATE INDEX users_last_seen_at ON users (last_seen_at);

-- A user's whitelist: who may send parcels to them.
CREATE TABLE contacts (
    user_id     INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    contact_key BLOB NOT NULL,
    PRIMARY KEY (user_id, contact_key)
) WITHOUT ROWID;

-- Contact exchanges. creator_id is NULL for sign-up invites.
CREATE TABLE exchanges (
    token       TEXT PRIMARY KEY NOT NULL,
    creator_id  INTEGER REFERENCES users (id) ON DELETE CASCADE,
    offer       TEXT NOT NULL,
    answer      TEXT,
    accepted_at INTEGER,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX exchanges_creator_id ON exchanges (creator_id);
CREATE INDEX exchanges_created_at ON exchanges (created_at);

-- Attachment files, stored once however many parcels share them.
CREATE TABLE attachments (
    id         TEXT PRIMARY KEY NOT NULL,
    size       INTEGER NOT NULL,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Parcels waiting for their recipient.
CREATE TABLE parcels (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT NOT NULL UNIQUE,
    recipient_id  INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sender_key    BLOB NOT NULL,
    type          TEXT NOT NULL,
    content       TEXT NOT NULL,
    attachment_id TEXT REFERENCES attachments (id),
    created_at    INTEGER NOT NULL
);
CREATE INDEX parcels_recipient ON parcels (recipient_id, seq);
CREATE INDEX parcels_recipient_sender ON parcels (recipient_id, sender_key, type);
CREATE INDEX parcels_attachment_id ON parcels (attachment_id) WHERE attachment_id IS NOT NULL;
CREATE INDEX parcels_created_at ON parcels (created_at);
CREATE INDEX parcels_type ON parcels (type);

-- One encrypted profile backup per user.
CREATE TABLE backups (
    user_id      INTEGER PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    content      TEXT NOT NULL,
    updated_at   INTEGER NOT NULL,
    last_read_at INTEGER
);

-- One Web Push subscription per user.
CREATE TABLE push_subscriptions (
    user_id          INTEGER PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint         TEXT NOT NULL,
    p256dh           BLOB NOT NULL,
    auth             BLOB NOT NULL,
    content_encoding TEXT NOT NULL,
    expires_at       INTEGER,
    created_at       INTEGER NOT NULL
);

-- Pushes waiting to be delivered; written in the parcel's transaction.
CREATE TABLE push_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id         INTEGER NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX push_outbox_next_attempt_at ON push_outbox (next_attempt_at);
CREATE INDEX push_outbox_user_id ON push_outbox (user_id);

-- Daily counters behind the "received in the last 7 days" statistic.
CREATE TABLE daily_stats (
    day            INTEGER PRIMARY KEY NOT NULL, -- days since the Unix epoch
    media_received INTEGER NOT NULL DEFAULT 0
);
