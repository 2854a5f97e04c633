//! The rules of the product, one module per feature. Nothing here knows a
//! wire type; functions take parsed ids, a `&Caller` and `now`.

pub mod accounts;
pub mod exchanges;
pub mod info;
pub mod parcels;

pub use crate::ids::{AttachmentId, ExchangeToken, ParcelId, UserId};

/// Who made a request: set by the authentication layer after the signature
/// checked out. Functions that need identity take `&Caller`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
}
