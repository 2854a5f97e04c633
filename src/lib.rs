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
//! - [`httpsig`]: RFC 9421 message signatures (pure code).
//! - [`client`]: a signing client for servers and tools.
//! - [`metrics`]: Prometheus metrics.
//! - [`clock`], [`error`]: time and the one error type.

pub mod api;
pub mod app;
pub mod blobs;
pub mod client;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod httpsig;
pub mod identity;
pub mod jobs;
pub mod metrics;
pub mod push;
pub mod serve;
pub mod store;
pub mod tls;

/// Types generated from `proto/piqchat/inbox/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("piqchat.inbox.v1");
}
