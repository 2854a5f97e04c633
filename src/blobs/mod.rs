//! The only code that touches attachment bytes or names where they live.
//!
//! [`Blobs`] is the facade the rest of the server sees: one arm per backend,
//! a folder on this machine ([`local`]) or an S3-compatible bucket
//! ([`object`]). Names come from [`AttachmentId`]s (UUIDs the server made),
//! never from requests, on both.

mod folder_sync;
mod local;
mod object;

use std::{collections::HashMap, io, path::Path, pin::Pin};

use tokio::io::AsyncRead;

pub use object::S3Settings;

use crate::{clock::Millis, config::Config, domain::AttachmentId};

/// An attachment being read: a stream of its bytes, never all of it in
/// memory at once.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

#[derive(Clone, Debug)]
pub enum Blobs {
    Local(local::LocalBlobs),
    Object(object::ObjectBlobs),
}

impl Blobs {
    /// Opens (creating) a local attachments folder.
    pub fn open(dir: &Path) -> io::Result<Self> {
        local::LocalBlobs::open(dir).map(Blobs::Local)
    }

    /// The backend the configuration names: the bucket of
    /// `ATTACHMENT_STORE_URL` when it is an `s3://` URL, else the folder.
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        match &config.attachments_s3 {
            Some(s3) => object::ObjectBlobs::open(s3)
                .map(Blobs::Object)
                .with_context(|| format!("configuring the attachment store {}", s3.url())),
            None => Self::open(&config.attachments_path).with_context(|| {
                format!(
                    "opening the attachments folder {}",
                    config.attachments_path.display()
                )
            }),
        }
    }

    /// Removes what an earlier server process left half-written. Only the
    /// server calls this at start, never an operator command that may run
    /// beside a live server. In a bucket nothing is done: other instances
    /// may be uploading (see [`Blobs::sweep_stale_uploads`]).
    pub fn remove_leftover_temp_files(&self) -> io::Result<()> {
        match self {
            Blobs::Local(b) => b.remove_leftover_temp_files(),
            Blobs::Object(_) => Ok(()),
        }
    }

    /// Stores `data` durably under `id`'s name: once this returns, a reader
    /// finds all of it, and a failure leaves nothing under that name.
    pub async fn write(&self, id: &AttachmentId, data: Vec<u8>) -> io::Result<()> {
        match self {
            Blobs::Local(b) => b.write(id, data).await,
            Blobs::Object(b) => b.write(id, data).await,
        }
    }

    /// Opens an attachment for reading. A missing one is
    /// [`io::ErrorKind::NotFound`] on both backends.
    pub async fn open_read(&self, id: &AttachmentId) -> io::Result<BlobReader> {
        match self {
            Blobs::Local(b) => Ok(Box::pin(b.open_read(id).await?)),
            Blobs::Object(b) => b.open_read(id).await,
        }
    }

    /// Removes an attachment; a missing one is not an error. Returns whether
    /// it was there.
    pub async fn remove(&self, id: &AttachmentId) -> io::Result<bool> {
        match self {
            Blobs::Local(b) => b.remove(id).await,
            Blobs::Object(b) => b.remove(id).await,
        }
    }

    /// Whether the attachment is stored.
    pub async fn exists(&self, id: &AttachmentId) -> io::Result<bool> {
        match self {
            Blobs::Local(b) => b.exists(id).await,
            Blobs::Object(b) => b.exists(id).await,
        }
    }

    /// Bytes free for new attachments, where the backend can tell: a bucket
    /// has no disk to fill (`None`).
    pub fn free_bytes(&self) -> io::Result<Option<u64>> {
        match self {
            Blobs::Local(b) => b.free_bytes().map(Some),
            Blobs::Object(_) => Ok(None),
        }
    }

    /// The finished attachments (not uploads in progress) with their
    /// modification times, for the orphan sweep. Foreign names are left out.
    pub async fn files(&self) -> io::Result<Vec<(AttachmentId, Millis)>> {
        match self {
            Blobs::Local(b) => b.files(),
            Blobs::Object(b) => b.files().await,
        }
    }

    /// Removes abandoned uploads last written before `cutoff`; newer ones
    /// may be in flight. Returns how many went. A bucket's incomplete
    /// multipart uploads cannot be listed through the object store client:
    /// the bucket's lifecycle rule aborts them (README, "Attachments in an
    /// object store"), so this is 0 there.
    pub async fn sweep_stale_uploads(&self, cutoff: Millis) -> io::Result<u64> {
        match self {
            Blobs::Local(b) => b.sweep_temp(cutoff),
            Blobs::Object(_) => Ok(0),
        }
    }

    /// A cheap check that the backend answers (for the readiness endpoint):
    /// the folder exists, or one HEAD request in the bucket succeeds within
    /// a few seconds.
    pub async fn ping(&self) -> io::Result<()> {
        match self {
            Blobs::Local(b) => b.ping().await,
            Blobs::Object(b) => b.ping().await,
        }
    }

    /// Every stored attachment with its size in bytes.
    pub async fn sizes(&self) -> io::Result<HashMap<AttachmentId, u64>> {
        match self {
            Blobs::Local(b) => b.sizes(),
            Blobs::Object(b) => b.sizes().await,
        }
    }

    /// Where attachments go, for logs and `check-config` (no secrets).
    pub fn describe(&self) -> String {
        match self {
            Blobs::Local(b) => format!("folder {}", b.dir().display()),
            Blobs::Object(b) => b.settings().describe(),
        }
    }
}

/// What [`copy_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    pub copied: u64,
    pub copied_bytes: u64,
    /// Already in the target with the same size.
    pub skipped: u64,
    /// Deleted from the source while the copy ran (a live server).
    pub vanished: u64,
}

/// Copies every attachment of `from` into `to` (`migrate-attachments`), one
/// at a time, then checks that each is in `to` with its size. Attachments
/// already in `to` with the same size are skipped, so an interrupted copy
/// can be run again; a target that holds attachments is refused unless
/// `force`.
pub async fn copy_all(from: &Blobs, to: &Blobs, force: bool) -> anyhow::Result<CopyReport> {
    use anyhow::Context as _;
    use tokio::io::AsyncReadExt as _;
    let source = from
        .sizes()
        .await
        .context("listing the attachments to copy")?;
    let present = to.sizes().await.context("listing the target")?;
    if !present.is_empty() && !force {
        anyhow::bail!(
            "the target already holds {} attachments; pass --force to copy into it anyway (attachments already there with the same size are skipped, others are overwritten)",
            present.len()
        );
    }
    let mut report = CopyReport::default();
    for (id, &size) in &source {
        if present.get(id) == Some(&size) {
            report.skipped += 1;
            continue;
        }
        let mut reader = match from.open_read(id).await {
            Ok(reader) => reader,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                report.vanished += 1;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("opening {id}")),
        };
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        reader
            .read_to_end(&mut data)
            .await
            .with_context(|| format!("reading {id}"))?;
        anyhow::ensure!(
            data.len() as u64 == size,
            "{id} changed while it was copied ({size} bytes listed, {} read); is a server still writing to the folder?",
            data.len()
        );
        to.write(id, data)
            .await
            .with_context(|| format!("writing {id}"))?;
        report.copied += 1;
        report.copied_bytes += size;
    }
    let copied = to.sizes().await.context("listing the target to verify")?;
    let still_there = from.sizes().await.context("listing the source again")?;
    for (id, size) in source.iter().filter(|(id, _)| still_there.contains_key(id)) {
        match copied.get(id) {
            Some(s) if s == size => {}
            Some(s) => anyhow::bail!("{id} has {s} bytes in the target, {size} in the source"),
            None => anyhow::bail!("{id} is missing from the target after the copy"),
        }
    }
    Ok(report)
}
