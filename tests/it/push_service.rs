//! A push-service stand-in: a real HTTP/1.1 server on 127.0.0.1:0 that
//! checks each push the way a push service (and the browser behind it)
//! would, and records what it got.
//!
//! For every `POST /push/<name>` it verifies the VAPID `Authorization:
//! vapid t=…, k=…` header (ES256 signature against `k`; `k` is the expected
//! server key; `aud` is this service's origin; `exp` in the future and at
//! most 24 h away; `sub` a `mailto:` or `https:` URL), `TTL`, `Urgency:
//! high` and `Content-Encoding`, and decrypts the body with the
//! subscription's private key and auth secret, generated here as a browser
//! would. A request failing any check is answered 400 and recorded in
//! [`PushService::rejections`]; a valid one is recorded in
//! [`PushService::received`] and answered with the next scripted [`Reply`]
//! (201 when the script is empty).

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use p256::ecdsa::signature::Verifier as _;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// The largest body accepted (RFC 8030 services take at least 4096 bytes).
const MAX_BODY: usize = 4096;

/// What to answer a valid push with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// This status and no `Retry-After` (201, 404, 410, 500, …).
    Status(u16),
    /// This status with `Retry-After: secs` (429, 503, …).
    RetryAfter { status: u16, secs: u64 },
    /// Never answer (the connection stays open until the client gives up).
    Hang,
}

/// One push that passed every check.
#[derive(Debug, Clone)]
pub struct Received {
    /// The subscription name (`/push/<name>`).
    pub name: String,
    /// The request path.
    pub path: String,
    /// `aes128gcm` or `aesgcm`.
    pub encoding: String,
    /// The `TTL` header, seconds.
    pub ttl: u64,
    /// The `Urgency` header.
    pub urgency: String,
    /// The decrypted payload.
    pub plaintext: Vec<u8>,
    /// The VAPID JWT claims.
    pub claims: serde_json::Value,
    /// What it was answered with.
    pub reply: Reply,
}

/// One push that failed a check (answered 400, or 404 for an unknown
/// subscription, or 413 for an oversized body).
#[derive(Debug, Clone)]
pub struct Rejection {
    pub path: String,
    pub reason: String,
}

/// A subscription as a browser makes it, with the private half kept here.
#[derive(Debug, Clone)]
pub struct BrowserSubscription {
    pub name: String,
    /// `http://127.0.0.1:<port>/push/<name>`.
    pub endpoint: String,
    /// The uncompressed P-256 public key (65 bytes).
    pub p256dh: Vec<u8>,
    /// The 16-byte auth secret.
    pub auth: Vec<u8>,
    /// `p256dh`, unpadded base64url.
    pub p256dh_b64: String,
    /// `auth`, unpadded base64url.
    pub auth_b64: String,
    /// What `PushSubscription.toJSON()` gives:
    /// `{"endpoint", "expirationTime": null, "keys": {"p256dh", "auth"}}`.
    pub json: serde_json::Value,
}

struct BrowserKeys {
    components: ece::EcKeyComponents,
    auth: Vec<u8>,
}

type NowFn = Arc<dyn Fn() -> i64 + Send + Sync>;

struct State {
    expected_key: String,
    origin: String,
    keys: Mutex<HashMap<String, BrowserKeys>>,
    gone: Mutex<HashSet<String>>,
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    rejections: Mutex<Vec<Rejection>>,
    now_ms: Mutex<NowFn>,
    connections: Mutex<Vec<AbortHandle>>,
}

/// The running stand-in; stops when dropped.
pub struct PushService {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl Drop for PushService {
    fn drop(&mut self) {
        self.accept.abort();
        for c in lock(&self.state.connections).drain(..) {
            c.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn system_now_ms() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PushService {
    /// Starts on 127.0.0.1:0. `expected_vapid_key` is the server's VAPID
    /// public key as GetInfo publishes it (unpadded base64url of the
    /// 65-byte point).
    pub async fn start(expected_vapid_key: String) -> PushService {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind push service");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State {
            expected_key: expected_vapid_key,
            origin: format!("http://{addr}"),
            keys: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashSet::new()),
            script: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            rejections: Mutex::new(Vec::new()),
            now_ms: Mutex::new(Arc::new(system_now_ms)),
            connections: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = accept_state.clone();
                let conn_state = state.clone();
                let task = tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = conn_state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                let mut connections = lock(&state.connections);
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        PushService {
            addr,
            state,
            accept,
        }
    }

    /// `http://127.0.0.1:<port>`: the VAPID audience, and the origin to
    /// allow through the server's endpoint guard.
    pub fn origin(&self) -> String {
        self.state.origin.clone()
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new browser subscription `name` (a fresh P-256 key pair and auth
    /// secret); pushes to it are decrypted with its private key.
    pub fn subscription(&self, name: &str) -> BrowserSubscription {
        let (key, auth) = ece::generate_keypair_and_auth_secret().expect("generate browser keys");
        let components = key.raw_components().expect("browser key components");
        let p256dh = components.public_key().to_vec();
        let auth = auth.to_vec();
        let endpoint = format!("{}/push/{name}", self.state.origin);
        let p256dh_b64 = URL_SAFE_NO_PAD.encode(&p256dh);
        let auth_b64 = URL_SAFE_NO_PAD.encode(&auth);
        let json = serde_json::json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": { "p256dh": p256dh_b64, "auth": auth_b64 },
        });
        lock(&self.state.keys).insert(
            name.to_owned(),
            BrowserKeys {
                components,
                auth: auth.clone(),
            },
        );
        BrowserSubscription {
            name: name.to_owned(),
            endpoint,
            p256dh,
            auth,
            p256dh_b64,
            auth_b64,
            json,
        }
    }

    /// Queues replies for the next valid pushes (in order, any
    /// subscription); after them, 201.
    pub fn script(&self, replies: &[Reply]) {
        lock(&self.state.script).extend(replies.iter().copied());
    }

    /// From now on, valid pushes to `name` are answered 410 Gone.
    pub fn expire(&self, name: &str) {
        lock(&self.state.gone).insert(name.to_owned());
    }

    /// Judges `exp` against this clock (ms since the epoch) instead of the
    /// system's, e.g. a test's manual clock.
    pub fn set_now(&self, now_ms: impl Fn() -> i64 + Send + Sync + 'static) {
        *lock(&self.state.now_ms) = Arc::new(now_ms);
    }

    /// The valid pushes so far.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// The refused pushes so far, with reasons.
    pub fn rejections(&self) -> Vec<Rejection> {
        lock(&self.state.rejections).clone()
    }

    /// Waits until at least `n` valid pushes arrived; panics after
    /// `timeout` with what did arrive and what was rejected.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = self.received();
            if received.len() >= n {
                return received;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "expected {n} pushes within {timeout:?}, got {}; rejections: {:?}",
                    received.len(),
                    self.rejections()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn respond(status: u16, retry_after: Option<u64>, body: &str) -> http::Response<Full<Bytes>> {
    let mut b = http::Response::builder().status(status);
    if let Some(secs) = retry_after {
        b = b.header("retry-after", secs.to_string());
    }
    b.body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid response")
}

async fn handle(state: &State, req: http::Request<Incoming>) -> http::Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let reject = |status: u16, reason: String| {
        lock(&state.rejections).push(Rejection {
            path: path.clone(),
            reason: reason.clone(),
        });
        respond(status, None, &reason)
    };
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reject(413, format!("body over {MAX_BODY} bytes")),
    };
    let Some(name) = path.strip_prefix("/push/").map(str::to_owned) else {
        return reject(404, "not a push resource".to_owned());
    };
    let checked = {
        let keys = lock(&state.keys);
        match keys.get(&name) {
            None => return reject(404, format!("unknown subscription {name}")),
            Some(k) => check(state, &parts, &body, k),
        }
    };
    let mut received = match checked {
        Ok(r) => r,
        Err(reason) => return reject(400, reason),
    };
    received.name = name.clone();
    received.path = path.clone();
    let reply = if lock(&state.gone).contains(&name) {
        Reply::Status(410)
    } else {
        lock(&state.script)
            .pop_front()
            .unwrap_or(Reply::Status(201))
    };
    received.reply = reply;
    lock(&state.received).push(received);
    match reply {
        Reply::Status(status) => respond(status, None, ""),
        Reply::RetryAfter { status, secs } => respond(status, Some(secs), ""),
        Reply::Hang => std::future::pending().await,
    }
}

fn header<'a>(parts: &'a http::request::Parts, name: &str) -> Result<&'a str, String> {
    parts
        .headers
        .get(name)
        .ok_or_else(|| format!("missing {name}"))?
        .to_str()
        .map_err(|_| format!("{name} is not text"))
}

fn b64(what: &str, text: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD
        .decode(text.trim())
        .map_err(|_| format!("{what} is not unpadded base64url"))
}

/// All the checks; on success a `Received` without name, path and reply.
fn check(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    keys: &BrowserKeys,
) -> Result<Received, String> {
    if parts.method != http::Method::POST {
        return Err(format!("method {} is not POST", parts.method));
    }
    let claims = check_vapid(state, header(parts, "authorization")?)?;

    let ttl = header(parts, "ttl")?;
    let ttl: u64 = ttl
        .trim()
        .parse()
        .map_err(|_| format!("ttl {ttl:?} is not a number"))?;
    let urgency = header(parts, "urgency")?.to_owned();
    if urgency != "high" {
        return Err(format!("urgency {urgency:?} is not high"));
    }
    let encoding = header(parts, "content-encoding")?.to_owned();
    let plaintext = match encoding.as_str() {
        "aes128gcm" => ece::decrypt(&keys.components, &keys.auth, body)
            .map_err(|e| format!("aes128gcm body does not decrypt: {e}"))?,
        "aesgcm" => decrypt_aesgcm(state, parts, body, keys)?,
        other => {
            return Err(format!(
                "content-encoding {other:?} is not aes128gcm or aesgcm"
            ));
        }
    };
    Ok(Received {
        name: String::new(),
        path: String::new(),
        encoding,
        ttl,
        urgency,
        plaintext,
        claims,
        reply: Reply::Status(201),
    })
}

/// Verifies `vapid t=<jwt>, k=<key>`; returns the claims.
fn check_vapid(state: &State, value: &str) -> Result<serde_json::Value, String> {
    let (scheme, params) = value
        .split_once(' ')
        .ok_or_else(|| "authorization has no parameters".to_owned())?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(format!("authorization scheme {scheme:?} is not vapid"));
    }
    let (mut t, mut k) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.trim()),
            Some(("k", v)) => k = Some(v.trim()),
            _ => return Err(format!("unexpected authorization parameter {param:?}")),
        }
    }
    let t = t.ok_or_else(|| "authorization has no t".to_owned())?;
    let k = k.ok_or_else(|| "authorization has no k".to_owned())?;
    if k != state.expected_key {
        return Err("k is not the server's vapid key".to_owned());
    }
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&b64("k", k)?)
        .map_err(|_| "k is not a p-256 point".to_owned())?;

    let mut parts = t.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("t is not a jws compact token".to_owned());
    };
    let header: serde_json::Value = serde_json::from_slice(&b64("jwt header", h)?)
        .map_err(|_| "jwt header is not json".to_owned())?;
    if header["alg"] != "ES256" {
        return Err(format!("jwt alg {} is not ES256", header["alg"]));
    }
    let signature = p256::ecdsa::Signature::from_slice(&b64("jwt signature", s)?)
        .map_err(|_| "jwt signature is not 64 bytes r||s".to_owned())?;
    key.verify(format!("{h}.{c}").as_bytes(), &signature)
        .map_err(|_| "jwt signature does not verify".to_owned())?;

    let claims: serde_json::Value = serde_json::from_slice(&b64("jwt claims", c)?)
        .map_err(|_| "jwt claims are not json".to_owned())?;
    if claims["aud"] != state.origin.as_str() {
        return Err(format!("aud {} is not {}", claims["aud"], state.origin));
    }
    let exp = claims["exp"]
        .as_i64()
        .ok_or_else(|| format!("exp {} is not an integer", claims["exp"]))?;
    let now_s = (lock(&state.now_ms))().div_euclid(1000);
    if exp <= now_s {
        return Err(format!("exp is {}s in the past", now_s - exp));
    }
    if exp > now_s + 24 * 60 * 60 {
        return Err(format!("exp is {}s away, over 24 h", exp - now_s));
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if !(sub.starts_with("mailto:") || sub.starts_with("https:")) {
        return Err(format!(
            "sub {} is not a mailto: or https: url",
            claims["sub"]
        ));
    }
    Ok(claims)
}

/// The legacy scheme: `Crypto-Key: dh=…[; p256ecdsa=…]`, `Encryption:
/// salt=…[;rs=…]`.
fn decrypt_aesgcm(
    state: &State,
    parts: &http::request::Parts,
    body: &[u8],
    keys: &BrowserKeys,
) -> Result<Vec<u8>, String> {
    let mut dh = None;
    for param in header(parts, "crypto-key")?.split([';', ',']) {
        match param.trim().split_once('=') {
            Some(("dh", v)) => dh = Some(b64("crypto-key dh", v)?),
            Some(("p256ecdsa", v)) if v.trim() != state.expected_key => {
                return Err("crypto-key p256ecdsa is not the server's vapid key".to_owned());
            }
            _ => {}
        }
    }
    let dh = dh.ok_or_else(|| "crypto-key has no dh".to_owned())?;
    let (mut salt, mut rs) = (None, 4096u32);
    for param in header(parts, "encryption")?.split(';') {
        match param.trim().split_once('=') {
            Some(("salt", v)) => salt = Some(b64("encryption salt", v)?),
            Some(("rs", v)) => {
                rs = v
                    .trim()
                    .parse()
                    .map_err(|_| "encryption rs is not a number")?
            }
            _ => {}
        }
    }
    let salt = salt.ok_or_else(|| "encryption has no salt".to_owned())?;
    let block = ece::legacy::AesGcmEncryptedBlock::new(&dh, &salt, rs, body.to_vec())
        .map_err(|e| format!("aesgcm block: {e}"))?;
    ece::legacy::decrypt_aesgcm(&keys.components, &keys.auth, &block)
        .map_err(|e| format!("aesgcm body does not decrypt: {e}"))
}

/// Round trips through the crate's own push modules.
mod round_trip {
    use super::*;
    use piqchat_inbox::push::guard::EndpointGuard;
    use piqchat_inbox::push::http::{PushClient, SendError};
    use piqchat_inbox::push::message::{
        Encoding, Subscription, VapidSigner, build_request, parcel_payload,
    };

    fn random_secret() -> p256::SecretKey {
        loop {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes).expect("random");
            if let Ok(key) = p256::SecretKey::from_slice(&bytes) {
                return key;
            }
        }
    }

    struct Setup {
        service: PushService,
        vapid: VapidSigner,
        client: PushClient,
    }

    async fn setup() -> Setup {
        let secret = random_secret();
        let vapid = VapidSigner::new(&secret, "mailto:admin@example.org".to_owned()).unwrap();
        let service = PushService::start(vapid.public_key_b64()).await;
        let guard = EndpointGuard::new(&service.origin()).unwrap();
        let client = PushClient::with_timeouts(
            Arc::new(guard),
            Duration::from_secs(2),
            Duration::from_millis(500),
        );
        Setup {
            service,
            vapid,
            client,
        }
    }

    fn subscription(b: &BrowserSubscription, encoding: Encoding) -> Subscription {
        Subscription {
            endpoint: b.endpoint.clone(),
            p256dh: b.p256dh.clone(),
            auth: b.auth.clone(),
            encoding,
        }
    }

    #[tokio::test]
    async fn both_encodings_arrive_decrypted_and_verified() {
        let s = setup().await;
        let payload = parcel_payload("MEDIA", "3f0c2a9e-8d4b-4c4e-9a51-0d7b5c1e2f3a");
        for (name, encoding) in [
            ("modern", Encoding::Aes128Gcm),
            ("legacy", Encoding::AesGcm),
        ] {
            let b = s.service.subscription(name);
            let req = build_request(
                &subscription(&b, encoding),
                &payload,
                259_200,
                &s.vapid,
                system_now_ms(),
            )
            .unwrap();
            let r = s.client.send(req).await.unwrap();
            assert_eq!(r.status, 201, "{:?}", s.service.rejections());
        }
        let got = s.service.wait_for(2, Duration::from_secs(2)).await;
        assert!(
            s.service.rejections().is_empty(),
            "{:?}",
            s.service.rejections()
        );
        assert_eq!(got[0].name, "modern");
        assert_eq!(got[0].path, "/push/modern");
        assert_eq!(got[0].encoding, "aes128gcm");
        assert_eq!(got[1].encoding, "aesgcm");
        for r in &got {
            assert_eq!(r.plaintext, payload);
            assert_eq!(r.ttl, 259_200);
            assert_eq!(r.urgency, "high");
            assert_eq!(r.claims["aud"], s.service.origin());
            assert_eq!(r.claims["sub"], "mailto:admin@example.org");
        }
        // The browser's toJSON shape.
        let b = s.service.subscription("shape");
        assert_eq!(b.json["endpoint"], b.endpoint);
        assert_eq!(b.json["keys"]["p256dh"], b.p256dh_b64);
        assert_eq!(b.json["keys"]["auth"], b.auth_b64);
        assert!(b.json["expirationTime"].is_null());
    }

    #[tokio::test]
    async fn scripted_replies_then_201() {
        let s = setup().await;
        let b = s.service.subscription("a");
        s.service.script(&[
            Reply::Status(404),
            Reply::RetryAfter {
                status: 429,
                secs: 7,
            },
            Reply::Status(500),
            Reply::Hang,
        ]);
        let send = || async {
            let req = build_request(
                &subscription(&b, Encoding::Aes128Gcm),
                b"hi",
                60,
                &s.vapid,
                system_now_ms(),
            )
            .unwrap();
            s.client.send(req).await
        };
        assert_eq!(send().await.unwrap().status, 404);
        let r = send().await.unwrap();
        assert_eq!(r.status, 429);
        assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(send().await.unwrap().status, 500);
        assert!(matches!(send().await, Err(SendError::Timeout)));
        assert_eq!(send().await.unwrap().status, 201);
        s.service.expire("a");
        assert_eq!(send().await.unwrap().status, 410);
        let replies: Vec<Reply> = s.service.received().iter().map(|r| r.reply).collect();
        assert_eq!(
            replies,
            [
                Reply::Status(404),
                Reply::RetryAfter {
                    status: 429,
                    secs: 7
                },
                Reply::Status(500),
                Reply::Hang,
                Reply::Status(201),
                Reply::Status(410),
            ]
        );
        assert!(s.service.rejections().is_empty());
    }

    #[tokio::test]
    async fn bad_vapid_is_rejected() {
        let s = setup().await;
        let b = s.service.subscription("a");
        let sub = subscription(&b, Encoding::Aes128Gcm);

        // Signed by another key that claims to be the server's.
        let other = VapidSigner::new(&random_secret(), "mailto:x@example.org".to_owned()).unwrap();
        let mut req = build_request(&sub, b"hi", 60, &other, system_now_ms()).unwrap();
        let forged = req.headers()["authorization"]
            .to_str()
            .unwrap()
            .replace(&other.public_key_b64(), &s.vapid.public_key_b64());
        req.headers_mut()
            .insert("authorization", forged.parse().unwrap());
        assert_eq!(s.client.send(req).await.unwrap().status, 400);

        // The right key, but not the one the service expects.
        let req = build_request(&sub, b"hi", 60, &other, system_now_ms()).unwrap();
        assert_eq!(s.client.send(req).await.unwrap().status, 400);

        // A token that expired (signed "two days ago").
        let req =
            build_request(&sub, b"hi", 60, &s.vapid, system_now_ms() - 2 * 86_400_000).unwrap();
        assert_eq!(s.client.send(req).await.unwrap().status, 400);

        // Wrong urgency, and an undecryptable body.
        let mut req = build_request(&sub, b"hi", 60, &s.vapid, system_now_ms()).unwrap();
        req.headers_mut()
            .insert("urgency", "normal".parse().unwrap());
        assert_eq!(s.client.send(req).await.unwrap().status, 400);
        let req = build_request(&sub, b"hi", 60, &s.vapid, system_now_ms()).unwrap();
        let (parts, body) = req.into_parts();
        let mut body = body.to_vec();
        let last = body.len() - 1;
        body[last] ^= 1;
        let req = http::Request::from_parts(parts, Bytes::from(body));
        assert_eq!(s.client.send(req).await.unwrap().status, 400);

        let reasons: Vec<String> = s
            .service
            .rejections()
            .into_iter()
            .map(|r| r.reason)
            .collect();
        assert_eq!(reasons.len(), 5, "{reasons:?}");
        assert!(
            reasons[0].contains("signature does not verify"),
            "{reasons:?}"
        );
        assert!(
            reasons[1].contains("not the server's vapid key"),
            "{reasons:?}"
        );
        assert!(reasons[2].contains("in the past"), "{reasons:?}");
        assert!(reasons[3].contains("urgency"), "{reasons:?}");
        assert!(reasons[4].contains("does not decrypt"), "{reasons:?}");
        assert!(s.service.received().is_empty());
    }

    #[tokio::test]
    async fn the_stand_in_is_refused_without_an_allowance() {
        let s = setup().await;
        let b = s.service.subscription("a");
        let req = build_request(
            &subscription(&b, Encoding::Aes128Gcm),
            b"hi",
            60,
            &s.vapid,
            system_now_ms(),
        )
        .unwrap();
        let client = PushClient::new(Arc::new(EndpointGuard::strict()));
        assert!(matches!(client.send(req).await, Err(SendError::Refused(_))));
        assert!(s.service.received().is_empty());
        assert!(s.service.rejections().is_empty());
    }
}
