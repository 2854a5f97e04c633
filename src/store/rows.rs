//! The row types every backend returns and takes: the facade's vocabulary.

use crate::{
    clock::{DAY, Millis},
    domain::{AttachmentId, ParcelId, UserId},
};

/// Days since the Unix epoch, the key of `daily_stats`.
pub fn day_of(now: Millis) -> i64 {
    now.div_euclid(DAY)
}

/// The `(public key, entry id)` rows a backend found for `ids`, as
/// `(user id, entry id)` in the order of `ids` (the order a send's
/// recipients were given in); ids without a row are left out.
pub(super) fn in_order_of(ids: &[UserId], rows: &[(Vec<u8>, i64)]) -> Vec<(UserId, i64)> {
    ids.iter()
        .filter_map(|id| {
            let (_, entry) = rows.iter().find(|(key, _)| key == id.as_bytes())?;
            Some((*id, *entry))
        })
        .collect()
}

/// Rows deleted per retention statement; between batches other writes get
/// their turn.
pub const RETENTION_BATCH: i64 = 1000;

/// A row of the invited-users view; `user_id` is `None` for deleted accounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvitedRow {
    pub entry_id: i64,
    pub user_id: Option<UserId>,
    pub invited_by: Option<i64>,
    pub last_seen_at: Option<Millis>,
    pub client_version: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRow {
    pub content: String,
    pub updated_at: Millis,
    pub last_read_at: Option<Millis>,
}

/// A push subscription as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushSubscriptionRow {
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
    pub content_encoding: String,
    pub expires_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExchangeRow {
    pub offer: String,
    pub answer: Option<String>,
    pub accepted_at: Option<Millis>,
    pub expires_at: Millis,
}

/// What an accept attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptOutcome {
    Accepted {
        offer: String,
        expires_at: Millis,
        /// `Some(true)` when an account was created, `Some(false)` when the
        /// user id was registered already, `None` when no sign-up was asked.
        account_created: Option<bool>,
    },
    Unknown,
    AlreadyAccepted,
    Expired,
}

/// One remembered nonce, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceRow {
    /// 64 bits of SHA-256(public key || nonce).
    pub id: u64,
    /// 64 bits of SHA-256(public key).
    pub key: u64,
    pub class: u8,
    /// Unix ms after which the signature is stale.
    pub until: Millis,
}

/// What the database knows about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyStanding {
    /// The key has an account here.
    pub registered: bool,
    /// Some registered user has the key in their contacts.
    pub accepted_as_sender: bool,
}

/// One parcel to store, for one recipient.
pub struct NewParcel {
    pub id: ParcelId,
    pub recipient: i64,
    pub content: String,
}

/// Everything one send stores, in one transaction.
pub struct NewParcels {
    pub sender: UserId,
    pub kind: String,
    pub attachment: Option<(AttachmentId, u64)>,
    pub parcels: Vec<NewParcel>,
    pub now: Millis,
    /// Refuse (store nothing) when any recipient would pass these.
    pub max_waiting_parcels: u32,
    pub max_waiting_attachment_bytes: u64,
    /// A push to queue for each recipient that has a subscription.
    pub push: Option<NewPush>,
}

/// Why a send stored nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum QuotaExceeded {
    Parcels { recipient: i64 },
    AttachmentBytes { recipient: i64 },
}

impl NewParcels {
    /// The first quota this send would break, given what each recipient has
    /// waiting as (recipient, parcels, attachment bytes); a recipient not in
    /// `waiting` has nothing waiting.
    pub fn over_quota(&self, waiting: &[(i64, i64, i64)]) -> Option<QuotaExceeded> {
        let adding = self.attachment.map_or(0, |(_, size)| size);
        self.parcels.iter().find_map(|p| {
            let (parcels, bytes) = waiting
                .iter()
                .find(|(r, _, _)| *r == p.recipient)
                .map_or((0, 0), |&(_, n, b)| (n, b));
            if parcels >= i64::from(self.max_waiting_parcels) {
                Some(QuotaExceeded::Parcels {
                    recipient: p.recipient,
                })
            } else if (bytes.max(0) as u64).saturating_add(adding)
                > self.max_waiting_attachment_bytes
            {
                Some(QuotaExceeded::AttachmentBytes {
                    recipient: p.recipient,
                })
            } else {
                None
            }
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParcelRow {
    /// The order of arrival: the key of list pages.
    pub seq: i64,
    pub id: ParcelId,
    pub kind: String,
    pub content: String,
    pub sender: UserId,
    pub sent_at: Millis,
    pub attachment_size: Option<u64>,
}

/// One pending push and where it goes.
#[derive(Clone, Debug)]
pub struct DuePush {
    pub id: i64,
    pub user_id: i64,
    pub payload: String,
    pub attempts: i64,
    pub expires_at: Millis,
    pub subscription: PushSubscriptionRow,
}

/// Written in the parcel's transaction: the pushes for the recipients that
/// have a subscription.
#[derive(Clone, Debug)]
pub struct NewPush {
    pub payload: String,
    pub ttl: Millis,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Statistics {
    pub users_total: u32,
    pub users_active_7d: u32,
    pub users_active_30d: u32,
    pub media_parcels_waiting: u32,
    pub media_parcels_received_7d: u32,
}

/// A registered (not deleted) user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserRow {
    /// Internal row id ("entry id").
    pub entry_id: i64,
    pub user_id: UserId,
    pub invited_by: Option<i64>,
    pub created_at: Millis,
    pub last_seen_at: Option<Millis>,
    pub client_version: Option<String>,
}
