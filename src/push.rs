//! Web Push delivery (SPEC §6): message encryption and VAPID ([`message`]),
//! the endpoint guard against server-side request forgery ([`guard`]), the
//! rustls HTTP client that only connects to vetted addresses ([`http`]), and
//! the persistent outbox worker (below).

pub mod guard;
pub mod http;
pub mod message;

use crate::domain::UserId;

/// Called after the parcels of one send were committed, with the recipients
/// that received them (user id, entry id).
pub fn parcels_stored(_kind: &str, _sender: &UserId, _recipients: &[(UserId, i64)]) {}
