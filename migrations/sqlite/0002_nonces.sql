-- Nonces of accepted signatures, kept while the signature could still be
-- valid, so that a replay is refused also after a restart. Not the nonce
-- itself: 64 bits of SHA-256(public key || nonce) as the row id, 64 bits of
-- SHA-256(public key) to count a key's live nonces again at start, and the
-- class of key its budget was charged to (0 registered, 1 contact, 2 unknown).
CREATE TABLE nonces (
    id    INTEGER PRIMARY KEY NOT NULL,
    key   INTEGER NOT NULL,
    class INTEGER NOT NULL,
    until INTEGER NOT NULL -- unix ms after which the signature is stale
);
CREATE INDEX nonces_until ON nonces (until);

-- Whether some user accepts a key as a sender, found per verified signature.
CREATE INDEX contacts_contact_key ON contacts (contact_key);
