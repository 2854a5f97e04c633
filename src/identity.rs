//! The server's own key pairs: Ed25519 (its identity, the `tag` that binds
//! signatures to this server) and P-256 for VAPID. Generated on first start,
//! persisted in the database, reused afterwards.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::SigningKey;

use crate::store::Store;

pub struct ServerIdentity {
    vapid_secret: p256::SecretKey,
    /// Text forms of the public keys, computed once: GetInfo is a hot path
    /// and deriving a P-256 public key is a scalar multiplication.
    public_key: String,
    vapid_public_key: String,
}

impl ServerIdentity {
    pub async fn load_or_create(store: &Store) -> anyhow::Result<Self> {
        let seed = store
            .server_value_or_insert("ed25519_secret_key", || random_bytes::<32>().to_vec())
            .await?;
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| anyhow::anyhow!("stored ed25519_secret_key is not 32 bytes"))?;
        let vapid = store
            .server_value_or_insert("vapid_p256_secret_key", new_p256_secret)
            .await?;
        let vapid_secret = p256::SecretKey::from_slice(&vapid).map_err(|_| {
            anyhow::anyhow!("stored vapid_p256_secret_key is not a valid P-256 key")
        })?;
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let signing_key = SigningKey::from_bytes(&seed);
        let vapid_point = vapid_secret.public_key().to_encoded_point(false);
        Ok(ServerIdentity {
            public_key: URL_SAFE_NO_PAD.encode(signing_key.verifying_key().as_bytes()),
            vapid_public_key: URL_SAFE_NO_PAD.encode(vapid_point.as_bytes()),
            vapid_secret,
        })
    }

    /// The server's public key, unpadded base64url: published by GetInfo and
    /// required as the `tag` of every signature made for this server.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// The VAPID public key as browsers take it (`applicationServerKey`): the
    /// uncompressed point, unpadded base64url.
    pub fn vapid_public_key(&self) -> &str {
        &self.vapid_public_key
    }

    /// The VAPID private key scalar, for signing VAPID tokens.
    pub fn vapid_secret(&self) -> &p256::SecretKey {
        &self.vapid_secret
    }
}

pub use crate::random::random_bytes;

fn new_p256_secret() -> Vec<u8> {
    // A random 32-byte string is a valid scalar with overwhelming probability;
    // loop for the rest.
    loop {
        let bytes = random_bytes::<32>();
        if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
            return key.to_bytes().to_vec();
        }
    }
}
