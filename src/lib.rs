//! piqchat-inbox: a self-hostable inbox server for piqchat.
//!
//! Code map, in reading order:
//! - [`config`]: typed configuration from the environment.
//! - [`app`]: wiring; `App::build` binds, `App::run` serves until shutdown.
//! - [`serve`]: connections — caps, idle and body timeouts, lingering close.
//! - [`api`]: the edge — gRPC, gRPC-web and the JSON gateway on one port,
//!   request authentication, the generated service traits implemented.
//! - [`domain`]: the rules, one module per feature; no wire types.
//! - [`store`]: the only code with SQL.
//! - [`blobs`]: the only code that touches attachment files.
//! - [`push`]: Web Push delivery.
//! - [`jobs`]: retention (forgetting on schedule) and scheduled backups.
//! - [`identity`]: the server's own key pairs.
//! - [`metrics`]: Prometheus metrics.
//! - [`error`]: the one error type.
//!
//! Shared with the client (the `client` feature builds only these):
//! - [`client`]: a signing client for servers and tools.
//! - [`httpsig`]: RFC 9421 message signatures (pure code).
//! - [`ids`]: user ids, tokens and parcel ids, parsed.
//! - [`pb`]: the generated messages and clients (and, with `server`, the
//!   service traits).
//! - [`clock`], [`random`]: time and randomness.

pub mod client;
pub mod clock;
mod codec;
pub mod httpsig;
pub mod ids;
pub mod random;

#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod app;
#[cfg(feature = "server")]
pub mod blobs;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod domain;
#[cfg(feature = "server")]
pub mod error;
#[cfg(feature = "server")]
pub mod identity;
#[cfg(feature = "server")]
pub mod jobs;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod push;
#[cfg(feature = "server")]
pub mod serve;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod tls;

/// Types generated from `proto/piqchat/inbox/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("piqchat.inbox.v1");
}
