//! Building one Web Push request: RFC 8030 delivery headers, RFC 8291
//! message encryption (`aes128gcm`, and the legacy `aesgcm` draft) and an
//! RFC 8292 VAPID `Authorization` header.
//!
//! Encryption and JWT signing come from the `web-push` crate; its HTTP
//! clients are not used. `web-push` builds `http` 0.2 requests, which are
//! turned into `http` 1 requests here without naming the old types.
//!
//! What `web-push` 0.11 does on its own, and what this module overrides:
//! - `aud`: it would use `scheme://host`, dropping a non-default port. We set
//!   `aud` ourselves to the RFC 6454 origin (`scheme://host[:port]`).
//! - `exp`: it would use the system clock + 12 h. We set `exp` from `now_ms`.
//!   `iat` and `nbf` are still written from the system clock by `jwt-simple`
//!   and cannot be overridden.
//! - `sub`: it would default to a placeholder address. We always set ours.
//! - It signs a new JWT for every message; [`VapidSigner`] caches one per
//!   audience instead.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use web_push::{
    ContentEncoding, PartialVapidSignatureBuilder, SubscriptionInfo, Urgency, VapidSignature,
    VapidSignatureBuilder, WebPushError, WebPushMessageBuilder,
};

/// How long a VAPID token is valid for (`exp` = now + this). Apple rejects
/// tokens that expire more than a day ahead.
pub const VAPID_TOKEN_LIFETIME_SECS: i64 = 12 * 60 * 60;

/// How long one signed token is reused for the same audience.
pub const VAPID_CACHE_MS: i64 = 60 * 60 * 1000;

/// The largest plaintext `web-push` encrypts.
pub const MAX_PAYLOAD_LEN: usize = 3052;

/// The content coding of a subscription (what its browser asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// RFC 8291 `aes128gcm`, what every current browser uses.
    #[default]
    Aes128Gcm,
    /// The legacy draft `aesgcm`, with `Crypto-Key` and `Encryption` headers.
    AesGcm,
}

impl Encoding {
    /// The `Content-Encoding` token.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Aes128Gcm => "aes128gcm",
            Encoding::AesGcm => "aesgcm",
        }
    }

    /// Parses the `Content-Encoding` token (as stored or as sent by a
    /// browser's `PushManager.supportedContentEncodings`).
    pub fn parse(token: &str) -> Option<Encoding> {
        match token {
            "aes128gcm" => Some(Encoding::Aes128Gcm),
            "aesgcm" => Some(Encoding::AesGcm),
            _ => None,
        }
    }

    fn to_web_push(self) -> ContentEncoding {
        match self {
            Encoding::Aes128Gcm => ContentEncoding::Aes128Gcm,
            Encoding::AesGcm => ContentEncoding::AesGcm,
        }
    }
}

/// A browser's push subscription: where to post and the keys to encrypt to.
#[derive(Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The push resource URL (the push service's capability URL).
    pub endpoint: String,
    /// The user agent's P-256 public key, uncompressed SEC1 (65 bytes).
    pub p256dh: Vec<u8>,
    /// The user agent's authentication secret (16 bytes).
    pub auth: Vec<u8>,
    /// The content coding to use.
    pub encoding: Encoding,
}

impl fmt::Debug for Subscription {
    // The endpoint is a capability URL and the auth secret is a secret: show
    // neither.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origin = self
            .endpoint
            .parse::<http::Uri>()
            .ok()
            .and_then(|u| audience_of(&u).ok())
            .unwrap_or_else(|| "<invalid>".to_owned());
        f.debug_struct("Subscription")
            .field("origin", &origin)
            .field("encoding", &self.encoding)
            .finish_non_exhaustive()
    }
}

/// Why a push request could not be built. Messages never contain key
/// material or endpoint paths.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The endpoint is not an absolute `http`/`https` URL with a host.
    #[error("invalid push endpoint")]
    InvalidEndpoint,
    /// `p256dh` is not a P-256 point or `auth` is not 16 bytes.
    #[error("invalid subscription keys")]
    InvalidKeys,
    /// The plaintext is over [`MAX_PAYLOAD_LEN`] bytes.
    #[error("push payload too large")]
    PayloadTooLarge,
    /// The VAPID key could not be loaded or the token not signed.
    #[error("vapid signing failed")]
    Vapid,
    /// Encryption failed for another reason.
    #[error("push message encryption failed")]
    Encryption,
    /// The produced request could not be represented (should not happen).
    #[error("invalid push request")]
    Request,
}

struct CachedToken {
    created_ms: i64,
    signature: VapidSignature,
}

/// Signs VAPID JWTs with the server's P-256 key.
///
/// One token is cached per audience (the endpoint's origin) for at most
/// [`VAPID_CACHE_MS`]; each token's `exp` is `now + 12 h`, its `sub` the
/// configured contact (a `mailto:` or `https:` URL).
pub struct VapidSigner {
    builder: PartialVapidSignatureBuilder,
    public_key: Vec<u8>,
    subject: String,
    cache: Mutex<HashMap<String, CachedToken>>,
}

impl fmt::Debug for VapidSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VapidSigner")
            .field("public_key", &URL_SAFE_NO_PAD.encode(&self.public_key))
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl VapidSigner {
    /// A signer for `secret` with the VAPID contact `subject`.
    pub fn new(secret: &p256::SecretKey, subject: String) -> Result<Self, PushError> {
        let encoded = URL_SAFE_NO_PAD.encode(secret.to_bytes());
        let builder =
            VapidSignatureBuilder::from_base64_no_sub(&encoded).map_err(|_| PushError::Vapid)?;
        let public_key = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        debug_assert_eq!(builder.get_public_key(), public_key);
        Ok(VapidSigner {
            builder,
            public_key,
            subject,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The public key as browsers take it (`applicationServerKey`, and `k`):
    /// the uncompressed point, unpadded base64url.
    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public_key)
    }

    /// The `Authorization` header value for `audience` (an origin,
    /// `scheme://host[:port]`): `vapid t=<jwt>, k=<public key>`.
    pub fn authorization(&self, audience: &str, now_ms: i64) -> Result<String, PushError> {
        let signature = self.signature(audience, now_ms)?;
        Ok(format!(
            "vapid t={}, k={}",
            signature.auth_t,
            URL_SAFE_NO_PAD.encode(&signature.auth_k)
        ))
    }

    fn signature(&self, audience: &str, now_ms: i64) -> Result<VapidSignature, PushError> {
        let fresh = |created_ms: i64| now_ms >= created_ms && now_ms - created_ms < VAPID_CACHE_MS;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = cache.get(audience)
            && fresh(cached.created_ms)
        {
            return Ok(cached.signature.clone());
        }
        let exp = now_ms.div_euclid(1000) + VAPID_TOKEN_LIFETIME_SECS;
        let exp = u64::try_from(exp).map_err(|_| PushError::Vapid)?;
        // The builder wants a subscription only to derive `aud`, which we
        // set ourselves; the audience parses as a URI.
        let info = SubscriptionInfo::new(audience.to_owned(), String::new(), String::new());
        let mut builder = self.builder.clone().add_sub_info(&info);
        builder.add_claim("aud", audience);
        builder.add_claim("exp", exp);
        builder.add_claim("sub", self.subject.as_str());
        let signature = builder.build().map_err(|_| PushError::Vapid)?;
        cache.retain(|_, c| fresh(c.created_ms));
        cache.insert(
            audience.to_owned(),
            CachedToken {
                created_ms: now_ms,
                signature: signature.clone(),
            },
        );
        Ok(signature)
    }
}

/// The RFC 6454 origin of an absolute `http`/`https` URI, as VAPID wants it
/// for `aud`: lower-case scheme and host, the port only if not the default.
pub fn audience_of(uri: &http::Uri) -> Result<String, PushError> {
    let scheme = uri.scheme_str().ok_or(PushError::InvalidEndpoint)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(PushError::InvalidEndpoint),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(PushError::InvalidEndpoint)?;
    let host = host.to_ascii_lowercase();
    Ok(match uri.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// The complete HTTP request for one push: `POST` to the endpoint with
/// `TTL`, `Urgency: high`, `Content-Encoding`, `Content-Type`, `Content-Length`,
/// the VAPID `Authorization` (and, for `aesgcm`, `Crypto-Key` and
/// `Encryption`); the body is the ciphertext.
pub fn build_request(
    sub: &Subscription,
    payload: &[u8],
    ttl_secs: u32,
    vapid: &VapidSigner,
    now_ms: i64,
) -> Result<http::Request<Bytes>, PushError> {
    let uri: http::Uri = sub
        .endpoint
        .parse()
        .map_err(|_| PushError::InvalidEndpoint)?;
    let audience = audience_of(&uri)?;
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(PushError::PayloadTooLarge);
    }
    if sub.auth.len() != 16 || p256::PublicKey::from_sec1_bytes(&sub.p256dh).is_err() {
        return Err(PushError::InvalidKeys);
    }
    let signature = vapid.signature(&audience, now_ms)?;

    let info = SubscriptionInfo::new(
        sub.endpoint.clone(),
        URL_SAFE_NO_PAD.encode(&sub.p256dh),
        URL_SAFE_NO_PAD.encode(&sub.auth),
    );
    let mut builder = WebPushMessageBuilder::new(&info);
    builder.set_ttl(ttl_secs);
    builder.set_urgency(Urgency::High);
    builder.set_payload(sub.encoding.to_web_push(), payload);
    builder.set_vapid_signature(signature);
    let message = builder.build().map_err(|e| match e {
        WebPushError::PayloadTooLarge => PushError::PayloadTooLarge,
        WebPushError::InvalidCryptoKeys | WebPushError::MissingCryptoKeys => PushError::InvalidKeys,
        WebPushError::InvalidUri => PushError::InvalidEndpoint,
        _ => PushError::Encryption,
    })?;

    // An `http` 0.2 request; copy it into an `http` 1 one.
    let old = web_push::request_builder::build_request::<Vec<u8>>(message);
    let mut request = http::Request::builder().method(http::Method::POST).uri(uri);
    for (name, value) in old.headers() {
        request = request.header(name.as_str(), value.as_bytes());
    }
    request
        .body(Bytes::from(old.into_body()))
        .map_err(|_| PushError::Request)
}

/// The plaintext of a parcel notification (SPEC §6), compact JSON:
/// `{"type":"PARCEL","payload":{"type":"<kind>","sender":"<sender id>"}}`.
pub fn parcel_payload(kind: &str, sender: &str) -> Vec<u8> {
    let kind = serde_json::Value::from(kind).to_string();
    let sender = serde_json::Value::from(sender).to_string();
    format!(r#"{{"type":"PARCEL","payload":{{"type":{kind},"sender":{sender}}}}}"#).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;

    const NOW: i64 = 1_750_000_000_000;

    fn random_secret() -> p256::SecretKey {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).unwrap();
            if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
                return key;
            }
        }
    }

    fn signer() -> (p256::SecretKey, VapidSigner) {
        let secret = random_secret();
        let signer = VapidSigner::new(&secret, "mailto:admin@example.org".to_owned()).unwrap();
        (secret, signer)
    }

    /// A browser-like subscription; returns the private key components for
    /// decrypting.
    fn browser(endpoint: &str, encoding: Encoding) -> (Subscription, ece::EcKeyComponents) {
        let (key, auth) = ece::generate_keypair_and_auth_secret().unwrap();
        let components = key.raw_components().unwrap();
        let sub = Subscription {
            endpoint: endpoint.to_owned(),
            p256dh: components.public_key().to_vec(),
            auth: auth.to_vec(),
            encoding,
        };
        (sub, components)
    }

    fn header<'a>(req: &'a http::Request<Bytes>, name: &str) -> &'a str {
        req.headers()
            .get(name)
            .unwrap_or_else(|| panic!("missing {name}"))
            .to_str()
            .unwrap()
    }

    fn b64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    /// Splits `vapid t=<jwt>, k=<key>`.
    fn split_vapid(value: &str) -> (String, String) {
        let rest = value.strip_prefix("vapid t=").expect("vapid scheme");
        let (t, k) = rest.split_once(", k=").expect("k parameter");
        (t.to_owned(), k.to_owned())
    }

    #[test]
    fn parcel_payload_is_byte_exact() {
        let p = parcel_payload("MEDIA", "3f0c2a9e-8d4b-4c4e-9a51-0d7b5c1e2f3a");
        assert_eq!(
            std::str::from_utf8(&p).unwrap(),
            r#"{"type":"PARCEL","payload":{"type":"MEDIA","sender":"3f0c2a9e-8d4b-4c4e-9a51-0d7b5c1e2f3a"}}"#
        );
        // Strings are escaped as JSON.
        let p = parcel_payload("MEDIA", "a\"b");
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["payload"]["sender"], "a\"b");
    }

    #[test]
    fn audience_is_the_origin() {
        let a = |s: &str| audience_of(&s.parse().unwrap()).unwrap();
        assert_eq!(
            a("https://fcm.googleapis.com/fcm/send/abc"),
            "https://fcm.googleapis.com"
        );
        assert_eq!(
            a("https://Push.Example.COM:443/x"),
            "https://push.example.com"
        );
        assert_eq!(
            a("https://push.example.com:8443/x"),
            "https://push.example.com:8443"
        );
        assert_eq!(a("http://127.0.0.1:9999/push/a"), "http://127.0.0.1:9999");
        assert_eq!(a("http://127.0.0.1:80/push/a"), "http://127.0.0.1");
        assert_eq!(a("https://[::1]:8443/p"), "https://[::1]:8443");
        for bad in ["/relative", "ftp://example.com/x", "example.com"] {
            let uri: http::Uri = bad.parse().unwrap();
            assert!(audience_of(&uri).is_err(), "{bad}");
        }
    }

    #[test]
    fn aes128gcm_request_has_the_right_headers_and_decrypts() {
        let (secret, vapid) = signer();
        let (sub, keys) = browser("https://push.example.com/wpush/v2/abc", Encoding::Aes128Gcm);
        let payload = parcel_payload("MEDIA", "someone");
        let req = build_request(&sub, &payload, 259_200, &vapid, NOW).unwrap();

        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "https://push.example.com/wpush/v2/abc");
        assert_eq!(header(&req, "ttl"), "259200");
        assert_eq!(header(&req, "urgency"), "high");
        assert_eq!(header(&req, "content-encoding"), "aes128gcm");
        assert_eq!(header(&req, "content-type"), "application/octet-stream");
        assert_eq!(header(&req, "content-length"), req.body().len().to_string());
        assert!(req.headers().get("crypto-key").is_none());
        assert!(req.headers().get("encryption").is_none());
        let (_, k) = split_vapid(header(&req, "authorization"));
        let public = secret.public_key().to_encoded_point(false);
        assert_eq!(b64(&k), public.as_bytes());
        assert_eq!(k, vapid.public_key_b64());

        let plain = ece::decrypt(&keys, &sub.auth, req.body()).unwrap();
        assert_eq!(plain, payload);
    }

    #[test]
    fn aesgcm_request_has_the_right_headers_and_decrypts() {
        let (_, vapid) = signer();
        let (sub, keys) = browser("https://push.example.com/x", Encoding::AesGcm);
        let payload = b"hello".to_vec();
        let req = build_request(&sub, &payload, 60, &vapid, NOW).unwrap();

        assert_eq!(header(&req, "ttl"), "60");
        assert_eq!(header(&req, "urgency"), "high");
        assert_eq!(header(&req, "content-encoding"), "aesgcm");
        assert_eq!(header(&req, "content-type"), "application/octet-stream");
        let (_, k) = split_vapid(header(&req, "authorization"));
        let crypto_key = header(&req, "crypto-key");
        assert!(crypto_key.starts_with("dh="), "{crypto_key}");
        assert!(
            crypto_key.ends_with(&format!("; p256ecdsa={k}")),
            "{crypto_key}"
        );
        let encryption = header(&req, "encryption");
        assert!(encryption.starts_with("salt="), "{encryption}");

        let dh = b64(crypto_key
            .strip_prefix("dh=")
            .unwrap()
            .split(';')
            .next()
            .unwrap());
        let mut salt = Vec::new();
        let mut rs = 4096;
        for part in encryption.split(';') {
            if let Some(v) = part.trim().strip_prefix("salt=") {
                salt = b64(v);
            } else if let Some(v) = part.trim().strip_prefix("rs=") {
                rs = v.parse().unwrap();
            }
        }
        let block =
            ece::legacy::AesGcmEncryptedBlock::new(&dh, &salt, rs, req.body().to_vec()).unwrap();
        let plain = ece::legacy::decrypt_aesgcm(&keys, &sub.auth, &block).unwrap();
        assert_eq!(plain, payload);
    }

    #[test]
    fn jwt_decodes_and_verifies() {
        let (secret, vapid) = signer();
        let value = vapid
            .authorization("https://push.example.com", NOW)
            .unwrap();
        let (t, k) = split_vapid(&value);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value = serde_json::from_slice(&b64(parts[0])).unwrap();
        assert_eq!(header["alg"], "ES256");
        let claims: serde_json::Value = serde_json::from_slice(&b64(parts[1])).unwrap();
        assert_eq!(claims["aud"], "https://push.example.com");
        assert_eq!(claims["sub"], "mailto:admin@example.org");
        assert_eq!(
            claims["exp"].as_i64().unwrap(),
            NOW / 1000 + VAPID_TOKEN_LIFETIME_SECS
        );

        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&b64(&k)).unwrap();
        assert_eq!(
            verifying,
            *p256::ecdsa::SigningKey::from(&secret).verifying_key()
        );
        let signature = p256::ecdsa::Signature::from_slice(&b64(parts[2])).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(signed.as_bytes(), &signature).unwrap();
        // A different message does not verify.
        assert!(verifying.verify(b"other", &signature).is_err());
    }

    #[test]
    fn token_is_cached_per_audience_for_an_hour() {
        let (_, vapid) = signer();
        let a = "https://push.example.com";
        let first = vapid.authorization(a, NOW).unwrap();
        assert_eq!(vapid.authorization(a, NOW + 1).unwrap(), first);
        assert_eq!(
            vapid.authorization(a, NOW + VAPID_CACHE_MS - 1).unwrap(),
            first
        );
        let later = vapid.authorization(a, NOW + VAPID_CACHE_MS).unwrap();
        assert_ne!(later, first);
        let (t, _) = split_vapid(&later);
        let claims: serde_json::Value =
            serde_json::from_slice(&b64(t.split('.').nth(1).unwrap())).unwrap();
        assert_eq!(
            claims["exp"].as_i64().unwrap(),
            (NOW + VAPID_CACHE_MS) / 1000 + VAPID_TOKEN_LIFETIME_SECS
        );
        // A clock that went backwards does not reuse a token from the future.
        assert_ne!(vapid.authorization(a, NOW).unwrap(), later);

        let other = vapid
            .authorization("https://other.example.com", NOW)
            .unwrap();
        assert_ne!(other, first);
        assert_ne!(other, later);
    }

    #[test]
    fn requests_to_one_origin_share_the_token() {
        let (_, vapid) = signer();
        let (s1, _) = browser("https://push.example.com/a", Encoding::Aes128Gcm);
        let (s2, _) = browser("https://push.example.com/b", Encoding::AesGcm);
        let r1 = build_request(&s1, b"x", 60, &vapid, NOW).unwrap();
        let r2 = build_request(&s2, b"x", 60, &vapid, NOW + 1000).unwrap();
        assert_eq!(header(&r1, "authorization"), header(&r2, "authorization"));
    }

    #[test]
    fn bad_input_is_refused() {
        let (_, vapid) = signer();
        let (good, _) = browser("https://push.example.com/a", Encoding::Aes128Gcm);

        let mut sub = good.clone();
        sub.endpoint = "not a url".to_owned();
        assert!(matches!(
            build_request(&sub, b"x", 60, &vapid, NOW),
            Err(PushError::InvalidEndpoint)
        ));
        sub.endpoint = "ftp://push.example.com/a".to_owned();
        assert!(matches!(
            build_request(&sub, b"x", 60, &vapid, NOW),
            Err(PushError::InvalidEndpoint)
        ));

        let mut sub = good.clone();
        sub.p256dh[10] ^= 0xff;
        assert!(matches!(
            build_request(&sub, b"x", 60, &vapid, NOW),
            Err(PushError::InvalidKeys)
        ));
        let mut sub = good.clone();
        sub.auth.pop();
        assert!(matches!(
            build_request(&sub, b"x", 60, &vapid, NOW),
            Err(PushError::InvalidKeys)
        ));

        let big = vec![b'a'; MAX_PAYLOAD_LEN + 1];
        assert!(matches!(
            build_request(&good, &big, 60, &vapid, NOW),
            Err(PushError::PayloadTooLarge)
        ));
        let max = vec![b'a'; MAX_PAYLOAD_LEN];
        assert!(build_request(&good, &max, 60, &vapid, NOW).is_ok());
    }

    #[test]
    fn debug_output_hides_secrets() {
        let (_, vapid) = signer();
        let (sub, _) = browser("https://push.example.com/secret-path", Encoding::Aes128Gcm);
        let text = format!("{sub:?} {vapid:?}");
        assert!(!text.contains("secret-path"), "{text}");
        assert!(text.contains("https://push.example.com"), "{text}");
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(&sub.auth)), "{text}");
    }
}
