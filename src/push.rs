//! Web Push delivery (SPEC §6). The hand-off below is the one place where a
//! stored parcel leads to push messages; delivery itself (VAPID, encryption,
//! the outbox and its worker) is not built yet, so it sends nothing.

use crate::domain::UserId;

/// Called after the parcels of one send were committed, with the recipients
/// that received them (user id, entry id).
pub fn parcels_stored(_kind: &str, _sender: &UserId, _recipients: &[(UserId, i64)]) {}
