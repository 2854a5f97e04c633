-- Attachment files whose rows were deleted, until the files are removed. The
-- row is written in the deleting transaction, so a crash right after the
-- commit cannot forget a file: the next start and every retention run remove
-- the listed files at once, without the orphan sweep's grace period.
CREATE TABLE file_removals (
    id TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
