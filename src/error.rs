//! The one error type of the service and its only mapping to a gRPC status.
//! HTTP statuses derive from the gRPC code (see `api::gateway`).

use tonic::{Code, Status};

/// Client errors say what to fix; `Internal` keeps its cause for the log and
/// tells the client only "internal error".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
    /// RESOURCE_EXHAUSTED that may be retried after `retry_after` (a rate
    /// limit); the delay travels as a `google.rpc.RetryInfo` detail.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Error::Internal(cause.into())
    }

    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::NotFound(_) => Code::NotFound,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unavailable(_) => Code::Unavailable,
            Error::RateLimited { .. } => Code::ResourceExhausted,
            Error::Internal(_) => Code::Internal,
        }
    }
}

/// What a caller is told when a write finds the disk (or the database) full:
/// the documented refusal, not a server fault, since nothing was stored and
/// the same call can succeed once space is freed.
pub const DISK_FULL: &str = "the server's storage is full and nothing was stored; try again later";

impl Error {
    fn disk_full(cause: &dyn std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "refused a write: the storage is full");
        Error::ResourceExhausted(DISK_FULL.into())
    }

    /// A database error shared by the jobs of one commit (see `store::writer`).
    pub fn database(e: std::sync::Arc<sqlx::Error>) -> Self {
        if is_disk_full(&e) {
            Error::disk_full(&e)
        } else {
            Error::Internal(Box::new(e))
        }
    }
}

/// SQLITE_FULL (13): "database or disk is full", from the disk or from
/// `max_page_count`. Extended codes keep the primary code in the low byte.
fn is_disk_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| c & 0xff == 13),
        sqlx::Error::Io(io) => io_is_full(io),
        _ => false,
    }
}

/// ENOSPC, EDQUOT, and EFBIG (a file-size limit such as RLIMIT_FSIZE).
fn io_is_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{FileTooLarge, QuotaExceeded, StorageFull};
    matches!(e.kind(), StorageFull | QuotaExceeded | FileTooLarge)
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        if is_disk_full(&e) {
            Error::disk_full(&e)
        } else {
            Error::Internal(Box::new(e))
        }
    }
}

impl From<crate::ids::InvalidId> for Error {
    fn from(e: crate::ids::InvalidId) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        if io_is_full(&e) {
            Error::disk_full(&e)
        } else {
            Error::Internal(Box::new(e))
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                Status::internal("internal error")
            }
            Error::RateLimited {
                message,
                retry_after,
            } => {
                let details = crate::api::gateway::retry_details(
                    Code::ResourceExhausted,
                    &message,
                    retry_after,
                );
                Status::with_details(Code::ResourceExhausted, message, details)
            }
            other => Status::new(other.code(), other.to_string()),
        }
    }
}
