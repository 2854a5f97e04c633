-- What each recipient has waiting, kept beside the user by triggers in the
-- transaction that adds or removes parcels: the quota check on every send
-- reads two numbers (under the row lock it takes anyway) instead of
-- counting the recipient's whole inbox, so a send costs the same however
-- much is waiting. Every path that removes parcels (delete, retention,
-- account deletion, cascades) is covered.
ALTER TABLE users
    ADD COLUMN waiting_parcels BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN waiting_bytes BIGINT NOT NULL DEFAULT 0;

UPDATE users u SET waiting_parcels = w.n, waiting_bytes = w.bytes
FROM (SELECT p.recipient_id, COUNT(*) AS n, COALESCE(SUM(a.size), 0)::BIGINT AS bytes
      FROM parcels p LEFT JOIN attachments a ON a.id = p.attachment_id
      GROUP BY p.recipient_id) w
WHERE u.id = w.recipient_id;

-- One update per statement, not per row (retention deletes thousands at
-- once). The users rows are locked in id order first, as sends lock them,
-- so a statement over many recipients cannot deadlock with a send. An
-- attachment row outlives its parcels (it is deleted after the last one),
-- so its size is there on both sides.
CREATE FUNCTION parcels_waiting_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    sign BIGINT := CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    PERFORM 1 FROM users WHERE id IN (SELECT recipient_id FROM changed) ORDER BY id FOR UPDATE;
    UPDATE users u SET
        waiting_parcels = u.waiting_parcels + sign * d.n,
        waiting_bytes = u.waiting_bytes + sign * d.bytes
    FROM (SELECT c.recipient_id, COUNT(*) AS n, COALESCE(SUM(a.size), 0)::BIGINT AS bytes
          FROM changed c LEFT JOIN attachments a ON a.id = c.attachment_id
          GROUP BY c.recipient_id) d
    WHERE u.id = d.recipient_id;
    RETURN NULL;
END $$;

CREATE TRIGGER parcels_waiting_insert AFTER INSERT ON parcels
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION parcels_waiting_change();
CREATE TRIGGER parcels_waiting_delete AFTER DELETE ON parcels
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION parcels_waiting_change();
