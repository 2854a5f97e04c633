//! The rules of the product, one module per feature. Nothing here knows a
//! wire type; functions take parsed ids, a `&Caller` and `now`.

pub mod accounts;
pub mod exchanges;
mod ids;
pub mod info;
pub mod parcels;

pub use ids::{AttachmentId, Caller, ExchangeToken, ParcelId, UserId};
