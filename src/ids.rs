//! Identifiers parsed at the edge: once a value has one of these types it is
//! known to be well-formed. Pure code, shared by the server and the client.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// A malformed identifier; the message says what was expected. The caller's
/// INVALID_ARGUMENT wherever it reaches the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(String);

impl From<InvalidId> for tonic::Status {
    fn from(e: InvalidId) -> Self {
        tonic::Status::invalid_argument(e.0)
    }
}

/// A user: the 32 bytes of their Ed25519 public key. Text form: unpadded
/// base64url, 43 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId([u8; 32]);

impl UserId {
    pub fn parse(text: &str) -> Result<Self, InvalidId> {
        let invalid = || {
            InvalidId(
                "invalid user id: expected 43 characters of unpadded base64url (a 32-byte Ed25519 public key)".into(),
            )
        };
        if text.len() != 43 {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        Ok(UserId(bytes))
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        UserId(bytes)
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(UserId)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether a signature by this key could ever verify: a valid point that
    /// is not of small order (the verifier refuses those keys).
    pub fn is_usable_key(&self) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&self.0).is_ok_and(|k| !k.is_weak())
    }

    /// The first 6 characters, for logs: enough to correlate, not to identify.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(6);
        s
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

// Debug shows only the short form so that a stray `{:?}` cannot log a full id.
impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({}…)", self.short())
    }
}

/// A random 128-bit identifier in UUID text form (122 random bits, v4):
/// used for exchange tokens, parcel ids and attachment names.
macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(uuid::Uuid);

        impl $name {
            pub fn random() -> Self {
                $name(uuid::Uuid::new_v4())
            }

            pub fn parse(text: &str) -> Result<Self, InvalidId> {
                uuid::Uuid::try_parse(text)
                    .ok()
                    .filter(|u| u.get_version_num() == 4)
                    .map($name)
                    .ok_or_else(|| {
                        InvalidId(format!(
                            concat!("invalid ", $what, ": expected a UUID like {}"),
                            "3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f"
                        ))
                    })
            }

            pub fn short(&self) -> String {
                let mut s = self.to_string();
                s.truncate(6);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({}…)"), self.short())
            }
        }
    };
}

/// The host in a sign-up invite's accept URL that stands for "the user's
/// server": the web app replaces it with the domain a user types.
pub const HOST_PLACEHOLDER: &str = "input_inbox_server_host";

uuid_id!(
    /// The one-time credential of a contact exchange.
    ExchangeToken,
    "exchange token"
);
uuid_id!(
    /// A parcel, as its recipient names it.
    ParcelId,
    "parcel id"
);
uuid_id!(
    /// An attachment file; doubles as its file name.
    AttachmentId,
    "attachment id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_round_trip_and_rejects() {
        let id = UserId::from_bytes([7; 32]);
        let text = id.to_string();
        assert_eq!(text.len(), 43);
        assert_eq!(UserId::parse(&text).unwrap(), id);
        for bad in [
            "",
            "abc",
            &format!("{text}="),
            &text.replace('B', "+"),
            &"!".repeat(43),
        ] {
            assert!(UserId::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{id:?}").contains(&text));
    }

    #[test]
    fn tokens_are_v4_uuids() {
        let t = ExchangeToken::random();
        assert_eq!(ExchangeToken::parse(&t.to_string()).unwrap(), t);
        assert!(ExchangeToken::parse("00000000-0000-0000-0000-000000000000").is_err());
        assert!(ExchangeToken::parse("nope").is_err());
    }
}
