//! Parcels: sending to registered recipients, listing, downloading and
//! deleting, delivery status.

use crate::{
    blobs::{BlobReader, Blobs},
    clock::{DAY, Millis},
    config::Limits,
    domain::{AttachmentId, Caller, ParcelId, UserId, accounts::not_registered},
    error::{Error, Result},
    push,
    store::{NewParcel, NewParcels, NewPush, ParcelRow, QuotaExceeded, Store},
};

/// The parcel type of images; only these count in statistics and push.
pub const MEDIA: &str = "MEDIA";
const MAX_TYPE_CHARS: usize = 32;
/// How stale a recorded last-seen time may get before a list updates it.
const SEEN_RESOLUTION: Millis = crate::clock::MINUTE;

/// The parcel type as logs and metrics show it: the sender chooses it, so only
/// a type the server knows is written out; any other could carry content or
/// an id (and would grow the label set).
pub fn kind_label(kind: &str) -> &'static str {
    if kind == MEDIA { MEDIA } else { "other" }
}

/// A send as the edge parsed it.
pub struct Send {
    pub kind: String,
    pub recipients: Vec<(UserId, String)>,
    pub attachment: Option<Vec<u8>>,
}

pub struct Sent {
    pub delivered: Vec<UserId>,
    pub forbidden: Vec<UserId>,
    /// Whether push messages were queued with the parcels.
    pub pushes_queued: bool,
}

/// When a recipient last listed their inbox, in coarse buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastSeen {
    Never,
    Recently,
    WithinWeek,
    WithinMonth,
    LongTime,
}

impl LastSeen {
    pub fn of(last_seen_at: Option<Millis>, now: Millis) -> Self {
        match last_seen_at {
            None => LastSeen::Never,
            Some(at) => match now - at {
                d if d <= 2 * DAY => LastSeen::Recently,
                d if d <= 7 * DAY => LastSeen::WithinWeek,
                d if d <= 31 * DAY => LastSeen::WithinMonth,
                _ => LastSeen::LongTime,
            },
        }
    }
}

pub struct DeliveryStatus {
    pub waiting_media: u32,
    pub last_seen: LastSeen,
}

fn validate(send: &Send, limits: &Limits) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidArgument(m));
    let kind = &send.kind;
    if kind.is_empty()
        || kind.len() > MAX_TYPE_CHARS
        || !kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        return invalid(format!(
            "type must be 1 to {MAX_TYPE_CHARS} characters of A-Z, a-z, 0-9, '_', '-' or '.', e.g. MEDIA"
        ));
    }
    if send.recipients.is_empty() {
        return invalid("at least one recipient is required".into());
    }
    if send.recipients.len() > limits.max_recipients as usize {
        return invalid(format!(
            "{} recipients; at most {} are accepted per parcel",
            send.recipients.len(),
            limits.max_recipients
        ));
    }
    for (i, (id, content)) in send.recipients.iter().enumerate() {
        if content.len() > limits.max_content_bytes as usize {
            return invalid(format!(
                "content for recipient {i} is {} bytes; at most {} bytes are accepted",
                content.len(),
                limits.max_content_bytes
            ));
        }
        if send.recipients[..i].iter().any(|(other, _)| other == id) {
            return invalid(format!("recipient {i} is listed twice"));
        }
    }
    if let Some(attachment) = &send.attachment {
        if attachment.is_empty() {
            return invalid("attachment is empty; leave it out instead".into());
        }
        if attachment.len() > limits.max_attachment_bytes as usize {
            return invalid(format!(
                "attachment is {} bytes; at most {} bytes are accepted",
                attachment.len(),
                limits.max_attachment_bytes
            ));
        }
    }
    Ok(())
}

/// Stores the parcel for every accepting recipient: attachment file first
/// (durable under its final name), then all rows in one transaction. A failure
/// after the file was written removes it again. With `push_ttl` set (push is
/// configured), a `MEDIA` parcel queues a push for each recipient that has a
/// subscription, in the same transaction. `admit` sees the accepting
/// recipients before anything is written and may refuse the send (the rate
/// limits).
#[allow(clippy::too_many_arguments)]
pub async fn send(
    store: &Store,
    blobs: &Blobs,
    limits: &Limits,
    caller: &Caller,
    mut send: Send,
    admit: impl FnOnce(&[UserId]) -> Result<()>,
    push_ttl: Option<Millis>,
    now: Millis,
) -> Result<Sent> {
    validate(&send, limits)?;
    let ids: Vec<UserId> = send.recipients.iter().map(|(id, _)| *id).collect();
    let accepting = store.accepting_recipients(&caller.user_id, &ids).await?;
    if accepting.is_empty() {
        return Err(Error::PermissionDenied(
            "no recipient accepts parcels from you (they must be registered here and have you as a contact)".into(),
        ));
    }
    let forbidden: Vec<UserId> = ids
        .iter()
        .filter(|id| !accepting.iter().any(|(a, _)| a == *id))
        .copied()
        .collect();
    admit(&accepting.iter().map(|(id, _)| *id).collect::<Vec<_>>())?;

    let attachment = match send.attachment.take() {
        None => None,
        Some(data) => {
            // A bucket has no disk to fill (`None`).
            if let Some(free) = blobs.free_bytes()?
                && free.saturating_sub(data.len() as u64) < limits.min_free_disk_bytes
            {
                tracing::warn!(
                    free,
                    "refusing an attachment: disk space is below the configured floor"
                );
                return Err(Error::ResourceExhausted(
                    "the server is low on disk space and accepts no attachments now; try again later".into(),
                ));
            }
            let id = AttachmentId::random();
            let size = data.len() as u64;
            blobs.write(&id, data).await?;
            Some((id, size))
        }
    };

    let parcels: Vec<NewParcel> = accepting
        .iter()
        .map(|(id, entry)| NewParcel {
            id: ParcelId::random(),
            recipient: *entry,
            content: send
                .recipients
                .iter()
                .find(|(r, _)| r == id)
                .expect("accepting ⊆ recipients")
                .1
                .clone(),
        })
        .collect();
    let new = NewParcels {
        sender: caller.user_id,
        kind: send.kind.clone(),
        attachment,
        parcels,
        now,
        max_waiting_parcels: limits.max_waiting_parcels,
        max_waiting_attachment_bytes: limits.max_waiting_attachment_bytes,
        // Only images notify, and only when push is configured.
        push: push_ttl.filter(|_| send.kind == MEDIA).map(|ttl| NewPush {
            payload: String::from_utf8_lossy(&push::message::parcel_payload(
                &send.kind,
                &caller.user_id.to_string(),
            ))
            .into_owned(),
            ttl,
        }),
    };
    let pushes_queued = new.push.is_some();
    let stored = store.insert_parcels(new).await;
    let refused = match stored {
        Ok(Ok(())) => None,
        Ok(Err(quota)) => Some(Error::ResourceExhausted(match quota {
            QuotaExceeded::Parcels { .. } => format!(
                "a recipient already has {} parcels waiting (MAX_WAITING_PARCELS_PER_RECIPIENT); nothing was stored",
                limits.max_waiting_parcels
            ),
            QuotaExceeded::AttachmentBytes { .. } => format!(
                "a recipient would have more than {} attachment bytes waiting (MAX_WAITING_ATTACHMENT_BYTES_PER_RECIPIENT); nothing was stored",
                limits.max_waiting_attachment_bytes
            ),
        })),
        Err(e) => Some(e),
    };
    if let Some(error) = refused {
        if let Some((id, _)) = &attachment {
            blobs.remove(id).await?;
        }
        return Err(error);
    }
    let delivered: Vec<UserId> = accepting.iter().map(|(id, _)| *id).collect();
    tracing::info!(
        sender = %caller.user_id.short(),
        kind = kind_label(&send.kind),
        delivered = delivered.len(),
        forbidden = forbidden.len(),
        attachment_bytes = attachment.map_or(0, |(_, size)| size),
        "parcel stored"
    );
    Ok(Sent {
        delivered,
        forbidden,
        pushes_queued,
    })
}

/// Whether `recipient` accepts parcels from the caller.
pub async fn accepts(store: &Store, caller: &Caller, recipient: &UserId) -> Result<bool> {
    Ok(store
        .acceptance(recipient, &caller.user_id)
        .await?
        .is_some())
}

pub async fn delivery_status(
    store: &Store,
    caller: &Caller,
    recipient: &UserId,
    now: Millis,
) -> Result<DeliveryStatus> {
    let (entry, last_seen_at) = store
        .acceptance(recipient, &caller.user_id)
        .await?
        .ok_or_else(|| {
            Error::PermissionDenied("this recipient does not accept parcels from you".into())
        })?;
    Ok(DeliveryStatus {
        waiting_media: store.waiting_media_from(entry, &caller.user_id).await?,
        last_seen: LastSeen::of(last_seen_at, now),
    })
}

/// The most parcels one list page holds; larger page sizes are cut to it.
pub const MAX_PAGE_SIZE: usize = 1000;

/// Which part of the inbox a list returns: the parcels after `after` (a
/// parcel's `seq`, from the previous page), at most `size` of them (0: all).
#[derive(Clone, Copy, Debug, Default)]
pub struct Page {
    pub size: usize,
    pub after: Option<i64>,
}

/// One page of the inbox, and where the next one starts if there is one.
pub struct Listed {
    pub parcels: Vec<ParcelRow>,
    pub next_after: Option<i64>,
}

/// The caller's parcels, oldest first, one page of them; records the caller
/// as seen.
pub async fn list(
    store: &Store,
    caller: &Caller,
    client_version: Option<&str>,
    page: Page,
    now: Millis,
) -> Result<Listed> {
    let (user, parcels) = store
        .inbox_of(&caller.user_id)
        .await?
        .ok_or_else(not_registered)?;
    // Last-seen is shown in buckets of days: a write (and fsync) per list
    // buys nothing, so a recent sighting with the same version is kept.
    let recent = user
        .last_seen_at
        .is_some_and(|t| (0..SEEN_RESOLUTION).contains(&(now - t)));
    let new_version = client_version.is_some_and(|v| user.client_version.as_deref() != Some(v));
    // Bookkeeping must not cost the user their inbox (e.g. on a full disk).
    if (!recent || new_version)
        && let Err(e) = store.record_seen(user.entry_id, now, client_version).await
    {
        tracing::warn!(error = %e, "recording last-seen failed; the inbox is answered anyway");
    }
    let mut parcels: Vec<ParcelRow> = match page.after {
        Some(after) => parcels.into_iter().filter(|p| p.seq > after).collect(),
        None => parcels,
    };
    let size = match page.size {
        0 => usize::MAX,
        n => n.min(MAX_PAGE_SIZE),
    };
    let next_after = (parcels.len() > size).then(|| {
        parcels.truncate(size);
        parcels.last().map_or(0, |p| p.seq)
    });
    Ok(Listed {
        parcels,
        next_after,
    })
}

/// Opens the attachment of one of the caller's parcels: a stream of its
/// bytes and its size.
pub async fn open_attachment(
    store: &Store,
    blobs: &Blobs,
    caller: &Caller,
    parcel: &ParcelId,
) -> Result<(BlobReader, u64)> {
    let not_found = || Error::NotFound("no such parcel with an attachment".into());
    let user = store
        .user_by_key(&caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    let (id, size) = store
        .attachment_of(parcel, user.entry_id)
        .await?
        .ok_or_else(not_found)?;
    let file = match blobs.open_read(&id).await {
        Ok(file) => file,
        // The row outlived its file (e.g. a database restored without the
        // attachments folder): the attachment is gone, not an internal error.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::NotFound("the attachment is no longer stored".into()));
        }
        Err(e) => return Err(e.into()),
    };
    Ok((file, size))
}

/// Deletes one of the caller's parcels, and its attachment file when no
/// other parcel references it.
pub async fn delete(
    store: &Store,
    blobs: &Blobs,
    caller: &Caller,
    parcel: &ParcelId,
) -> Result<()> {
    let not_found = || Error::NotFound("no such parcel".into());
    let user = store
        .user_by_key(&caller.user_id)
        .await?
        .ok_or_else(not_found)?;
    let orphan = store
        .delete_parcel(parcel, user.entry_id)
        .await?
        .ok_or_else(not_found)?;
    if let Some(id) = orphan {
        // The row is gone; a crash before this line leaves a file that the
        // orphan sweep removes.
        blobs.remove(&id).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_parcel_types_are_shown_in_logs_and_metrics() {
        assert_eq!(kind_label("MEDIA"), "MEDIA");
        assert_eq!(kind_label("alice-bob-secret"), "other");
        assert_eq!(kind_label("media"), "other");
    }

    #[test]
    fn last_seen_buckets() {
        let now = 100 * DAY;
        assert_eq!(LastSeen::of(None, now), LastSeen::Never);
        assert_eq!(LastSeen::of(Some(now), now), LastSeen::Recently);
        assert_eq!(LastSeen::of(Some(now - 2 * DAY), now), LastSeen::Recently);
        assert_eq!(
            LastSeen::of(Some(now - 2 * DAY - 1), now),
            LastSeen::WithinWeek
        );
        assert_eq!(LastSeen::of(Some(now - 7 * DAY), now), LastSeen::WithinWeek);
        assert_eq!(
            LastSeen::of(Some(now - 7 * DAY - 1), now),
            LastSeen::WithinMonth
        );
        assert_eq!(
            LastSeen::of(Some(now - 31 * DAY), now),
            LastSeen::WithinMonth
        );
        assert_eq!(
            LastSeen::of(Some(now - 31 * DAY - 1), now),
            LastSeen::LongTime
        );
    }
}
