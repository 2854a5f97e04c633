//! The one source of "now". Rules that depend on time take `now` as an
//! argument; the clock is read at the edge, and tests move it.

use std::sync::{
    Arc,
    atomic::{AtomicI64, Ordering},
};

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

pub const SECOND: Millis = 1000;
pub const MINUTE: Millis = 60 * SECOND;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

/// The system clock, or a manual one for tests.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that starts at `start` and moves only when told to.
    pub fn manual(start: Millis) -> Self {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(start))),
        }
    }

    pub fn now(&self) -> Millis {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => system_now(),
        }
    }

    /// Moves a manual clock forward (or back, with a negative amount).
    /// Panics on the system clock: only tests call it.
    pub fn advance(&self, by: Millis) {
        self.manual
            .as_ref()
            .expect("only a manual clock can be moved")
            .fetch_add(by, Ordering::SeqCst);
    }
}

fn system_now() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}
