//! Attachments as files in one folder (the default backend).
//!
//! A file is written under `tmp/`, fsync'd, then renamed into place (and the
//! folder fsync'd), so a file under its final name is always complete. Names
//! come from [`AttachmentId`]s (UUIDs the server made), never from requests.

use std::{
    collections::HashMap,
    io::{self, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use super::folder_sync::FolderSync;
use crate::{clock::Millis, domain::AttachmentId};

#[derive(Clone, Debug)]
pub struct LocalBlobs {
    dir: Arc<PathBuf>,
    folder_sync: Arc<FolderSync>,
}

impl LocalBlobs {
    /// Opens (creating) the folder.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        Ok(LocalBlobs {
            dir: Arc::new(dir.to_owned()),
            folder_sync: Arc::default(),
        })
    }

    /// Removes temp files that an earlier server process left half-written.
    /// Only the server calls this at start, never an operator command that
    /// may run beside a live server.
    pub fn remove_leftover_temp_files(&self) -> io::Result<()> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftover temporary attachment files");
        }
        Ok(())
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn path(&self, id: &AttachmentId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes `data` durably under `id`'s name. One blocking task does all
    /// the steps: each hand-over to the blocking pool costs as much as a
    /// small write. The folder's `fsync` is shared with the writes that
    /// renamed at the same time (see `folder_sync`).
    pub async fn write(&self, id: &AttachmentId, data: Vec<u8>) -> io::Result<()> {
        let tmp = self.tmp_dir().join(id.to_string());
        let path = self.path(id);
        let dir = self.dir.clone();
        let folder_sync = self.folder_sync.clone();
        let write = move || {
            let result = (|| {
                let mut file = std::fs::File::create(&tmp)?;
                file.write_all(&data)?;
                // Contents and size; the name is the folder's business.
                file.sync_data()?;
                drop(file);
                std::fs::rename(&tmp, &path)
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
                return result;
            }
            // The rename is durable once the folder is. On failure the name
            // goes again: a failed write leaves nothing under it.
            let synced = folder_sync.after_rename(&dir);
            if synced.is_err() {
                let _ = std::fs::remove_file(&path);
            }
            synced
        };
        tokio::task::spawn_blocking(write)
            .await
            .map_err(io::Error::other)?
    }

    /// Opens an attachment for reading.
    pub async fn open_read(&self, id: &AttachmentId) -> io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path(id)).await
    }

    /// The folder, for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder is there and is a folder (the readiness check).
    pub async fn ping(&self) -> io::Result<()> {
        let meta = tokio::fs::metadata(self.dir.as_path()).await?;
        if meta.is_dir() {
            Ok(())
        } else {
            Err(io::Error::other("the attachments path is not a folder"))
        }
    }

    /// Removes an attachment; a missing file is not an error. Returns whether
    /// the file was there.
    pub async fn remove(&self, id: &AttachmentId) -> io::Result<bool> {
        match tokio::fs::remove_file(self.path(id)).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the file exists.
    pub async fn exists(&self, id: &AttachmentId) -> io::Result<bool> {
        tokio::fs::try_exists(self.path(id)).await
    }

    /// Bytes available to unprivileged users on the attachments' file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(self.dir.as_path())?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// The finished files (not temp files) with their modification times,
    /// for the orphan sweep. Files with foreign names are left alone.
    pub fn files(&self) -> io::Result<Vec<(AttachmentId, Millis)>> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if !meta.is_file() {
                continue;
            }
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| AttachmentId::parse(n).ok())
            {
                found.push((id, modified_ms(&meta)));
            }
        }
        Ok(found)
    }

    /// The finished files with their sizes.
    pub fn sizes(&self) -> io::Result<HashMap<AttachmentId, u64>> {
        let mut found = HashMap::new();
        for entry in std::fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|n| AttachmentId::parse(n).ok())
                .filter(|_| meta.is_file())
            {
                found.insert(id, meta.len());
            }
        }
        Ok(found)
    }

    /// Removes temp files last written before `cutoff` (abandoned uploads);
    /// newer ones may belong to an upload in flight.
    pub fn sweep_temp(&self, cutoff: Millis) -> io::Result<u64> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.tmp_dir())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() && modified_ms(&meta) < cutoff {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

fn modified_ms(meta: &std::fs::Metadata) -> Millis {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as Millis)
}
