-- What each recipient has waiting, kept beside the user by triggers in the
-- transaction that adds or removes a parcel: the quota check on every send
-- reads two numbers instead of counting the recipient's whole inbox, so a
-- send costs the same however much is waiting. Every path that removes
-- parcels (delete, retention, account deletion, cascades) is covered.
ALTER TABLE users ADD COLUMN waiting_parcels INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN waiting_bytes INTEGER NOT NULL DEFAULT 0;

UPDATE users SET
    waiting_parcels = (SELECT COUNT(*) FROM parcels p WHERE p.recipient_id = users.id),
    waiting_bytes = (SELECT COALESCE(SUM(a.size), 0) FROM parcels p
                     JOIN attachments a ON a.id = p.attachment_id
                     WHERE p.recipient_id = users.id);

-- An attachment row outlives its parcels (it is deleted after the last
-- one), so its size is there for both triggers.
CREATE TRIGGER parcels_waiting_insert AFTER INSERT ON parcels
BEGIN
    UPDATE users SET
        waiting_parcels = waiting_parcels + 1,
        waiting_bytes = waiting_bytes
            + COALESCE((SELECT size FROM attachments WHERE id = NEW.attachment_id), 0)
    WHERE id = NEW.recipient_id;
END;

CREATE TRIGGER parcels_waiting_delete AFTER DELETE ON parcels
BEGIN
    UPDATE users SET
        waiting_parcels = waiting_parcels - 1,
        waiting_bytes = waiting_bytes
            - COALESCE((SELECT size FROM attachments WHERE id = OLD.attachment_id), 0)
    WHERE id = OLD.recipient_id;
END;
