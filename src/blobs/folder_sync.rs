//! Group commit for renames: one `fsync` of the attachments folder makes
//! every rename into it that finished before the `fsync` began durable, so
//! concurrent writes share it instead of each waiting for one of its own.
//!
//! Each writer takes a ticket after its rename. A writer finding no `fsync`
//! in progress runs one for every ticket taken so far; the others wait for
//! the first `fsync` that began after their ticket. A failed `fsync` fails
//! every ticket it was meant to cover (a later success would not prove that
//! those renames reached the disk), so no write is acknowledged on a guess.

use std::{
    io,
    path::Path,
    sync::{Condvar, Mutex},
};

#[derive(Debug, Default)]
pub(super) struct FolderSync {
    state: Mutex<State>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Tickets handed out; each follows a finished rename.
    taken: u64,
    /// Every ticket up to this one is durable.
    synced: u64,
    /// Every ticket up to this one (and not synced before) failed.
    failed: u64,
    running: bool,
    /// `fsync` calls made (tests check that writers share them).
    #[cfg(test)]
    calls: u64,
}

impl FolderSync {
    /// Blocks until the renames into `dir` that finished before this call
    /// are on disk. Runs on a blocking thread.
    pub(super) fn after_rename(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.lock();
        state.taken += 1;
        let ticket = state.taken;
        loop {
            if state.synced >= ticket {
                return Ok(());
            }
            if state.failed >= ticket {
                return Err(io::Error::other(
                    "syncing the attachments folder failed; the write is not durable",
                ));
            }
            if state.running {
                state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Covers every ticket taken so far, this one included.
            let covers = state.taken;
            state.running = true;
            #[cfg(test)]
            {
                state.calls += 1;
            }
            drop(state);
            let result = std::fs::File::open(dir).and_then(|folder| folder.sync_all());
            state = self.lock();
            state.running = false;
            match &result {
                Ok(()) => state.synced = state.synced.max(covers),
                Err(e) => {
                    tracing::error!(error = %e, "syncing the attachments folder failed");
                    state.failed = state.failed.max(covers);
                }
            }
            self.done.notify_all();
        }
    }

    #[cfg(test)]
    fn calls(&self) -> u64 {
        self.lock().calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic elsewhere: every field
        // is set under the lock in one step.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::FolderSync;

    #[test]
    fn writers_that_wait_together_share_one_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(FolderSync::default());
        // An fsync in progress: everyone who arrives now waits for the next.
        sync.lock().running = true;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (sync, dir) = (sync.clone(), dir.path().to_owned());
                std::thread::spawn(move || sync.after_rename(&dir))
            })
            .collect();
        while sync.lock().taken < 8 {
            std::thread::sleep(Duration::from_millis(1));
        }
        sync.lock().running = false;
        sync.done.notify_all();
        for writer in writers {
            writer.join().unwrap().unwrap();
        }
        assert_eq!(sync.calls(), 1, "eight waiting writers, one fsync");
        // A later writer is not covered by the earlier fsync.
        sync.after_rename(dir.path()).unwrap();
        assert_eq!(sync.calls(), 2);
    }

    #[test]
    fn a_failed_fsync_fails_the_writes_it_covered() {
        let dir = tempfile::tempdir().unwrap();
        let sync = FolderSync::default();
        let gone = dir.path().join("missing");
        assert!(sync.after_rename(&gone).is_err());
        // The next write gets an fsync of its own, which succeeds.
        sync.after_rename(dir.path()).unwrap();
        assert_eq!(sync.calls(), 2);
    }
}
