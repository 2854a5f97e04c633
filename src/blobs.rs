//! The only code that touches attachment files or builds their paths.
//!
//! A file is written under `tmp/`, fsync'd, then renamed into place (and the
//! folder fsync'd), so a file under its final name is always complete. Names
//! come from [`AttachmentId`]s (UUIDs the server made), never from requests.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::io::AsyncWriteExt;

use crate::domain::AttachmentId;

#[derive(Clone, Debug)]
pub struct Blobs {
    dir: Arc<PathBuf>,
}

impl Blobs {
    /// Opens (creating) the folder and removes temp files that an earlier
    /// process left half-written.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir.join("tmp"))?;
        let blobs = Blobs {
            dir: Arc::new(dir.to_owned()),
        };
        let mut removed = 0;
        for entry in std::fs::read_dir(blobs.tmp_dir())? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed leftover temporary attachment files");
        }
        Ok(blobs)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    fn path(&self, id: &AttachmentId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    /// Writes `data` durably under `id`'s name.
    pub async fn write(&self, id: &AttachmentId, data: &[u8]) -> io::Result<()> {
        let tmp = self.tmp_dir().join(id.to_string());
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            file.write_all(data).await?;
            file.sync_all().await?;
            drop(file);
            tokio::fs::rename(&tmp, self.path(id)).await?;
            sync_dir(&self.dir).await
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    /// Opens an attachment for reading.
    pub async fn open_read(&self, id: &AttachmentId) -> io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path(id)).await
    }

    /// Removes an attachment; a missing file is not an error.
    pub async fn remove(&self, id: &AttachmentId) -> io::Result<()> {
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the file exists (tests and the orphan sweep use it).
    pub async fn exists(&self, id: &AttachmentId) -> bool {
        tokio::fs::try_exists(self.path(id)).await.unwrap_or(false)
    }

    /// Bytes available to unprivileged users on the attachments' file system.
    pub fn free_bytes(&self) -> io::Result<u64> {
        let stat = rustix::fs::statvfs(self.dir.as_path())?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Names of the finished files (not temp files), for the orphan sweep.
    pub fn list(&self) -> io::Result<Vec<AttachmentId>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(self.dir.as_path())? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Some(id) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| AttachmentId::parse(n).ok())
            {
                ids.push(id);
            }
        }
        Ok(ids)
    }
}

/// Makes a rename durable: fsync the folder that holds the new name.
async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
        .await
        .map_err(io::Error::other)?
}
