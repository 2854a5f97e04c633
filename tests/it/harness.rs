//! `TestApp` runs the real server; `TestUser` signs its requests.

use std::{net::SocketAddr, path::Path, sync::Arc};

use piqchat_inbox::{
    app::{App, AppState},
    client::{self, HttpClient, RequestSigner, SignedChannel, UserKey},
    clock::Clock,
    config::Config,
    domain::exchanges,
    pb,
};
use tokio::sync::oneshot;

use crate::push_service::PushService;

pub struct TestApp {
    pub addr: SocketAddr,
    pub url: String,
    pub clock: Clock,
    pub state: AppState,
    /// The server's public key: the `tag` signatures must carry.
    pub server_tag: String,
    pub dir: Arc<tempfile::TempDir>,
    /// The sign-up invite link printed at start, if one was made.
    pub sign_up_invite: Option<String>,
    /// Where `/metrics` is served.
    pub metrics_url: String,
    /// The PostgreSQL database of this test, when the suite runs on one.
    pg: Option<Arc<TestDatabase>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    /// Spawns with a configuration adjusted by `adjust`.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::for_dir(dir.path());
        // Before `adjust`, so a test about files on disk can set it to None.
        config.attachments_s3 = test_bucket();
        let pg = TestDatabase::create().await.map(Arc::new);
        config.database_url = pg.as_ref().map(|db| db.target.clone());
        adjust(&mut config);
        Self::start(Arc::new(dir), config, Clock::manual(now_ms()), pg).await
    }

    /// Whether the suite runs on PostgreSQL (`PIQCHAT_TEST_DATABASE_URL`).
    pub fn on_postgres(&self) -> bool {
        self.state.config.database_url.is_some()
    }

    /// For tests of the SQLite file itself: true (and says why) when the
    /// suite runs on PostgreSQL, where the test does not apply.
    pub fn skip_unless_sqlite(&self, reason: &str) -> bool {
        if self.on_postgres() {
            eprintln!("skipped on PostgreSQL: this test {reason}");
        }
        self.on_postgres()
    }

    /// Rows in `table`, counted on a connection of the test's own beside
    /// the server's (the SQLite file or the PostgreSQL database).
    pub async fn count_rows(&self, table: &str) -> i64 {
        use sqlx::Connection as _;
        let sql = format!("SELECT COUNT(*) FROM {table}");
        if let Some(pg) = &self.state.config.database_url {
            let mut conn = sqlx::PgConnection::connect_with(&pg.connect_options())
                .await
                .expect("the test database answers");
            let (n,): (i64,) = sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap();
            return n;
        }
        let mut conn =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", self.db_path().display()))
                .await
                .expect("the database file opens");
        let (n,): (i64,) = sqlx::query_as(&sql).fetch_one(&mut conn).await.unwrap();
        n
    }

    /// Two instances started at the same moment on one fresh PostgreSQL
    /// database (a first start of a cluster); `None` on SQLite.
    pub async fn spawn_two_at_once() -> Option<(TestApp, TestApp)> {
        let pg = Arc::new(TestDatabase::create().await?);
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        let mut config = Config::for_dir(dir.path());
        config.database_url = Some(pg.target.clone());
        config.attachments_s3 = test_bucket();
        let clock = Clock::manual(now_ms());
        Some(tokio::join!(
            Self::start(dir.clone(), config.clone(), clock.clone(), Some(pg.clone())),
            Self::start(dir, config, clock, Some(pg)),
        ))
    }

    /// A second instance of the same server: same database, attachment
    /// folder, configuration and clock, its own listener and process state.
    pub async fn another_instance(&self) -> TestApp {
        let config = (*self.state.config).clone();
        Self::start(
            self.dir.clone(),
            config,
            self.clock.clone(),
            self.pg.clone(),
        )
        .await
    }

    async fn start(
        dir: Arc<tempfile::TempDir>,
        config: Config,
        clock: Clock,
        pg: Option<Arc<TestDatabase>>,
    ) -> TestApp {
        let app = App::build(config, clock.clone()).await.expect("app builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let sign_up_invite = app.sign_up_invite().map(str::to_owned);
        let metrics_url = format!(
            "http://{}/metrics",
            app.metrics_addr().expect("metrics listener")
        );
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async {
            let _ = rx.await;
        }));
        TestApp {
            addr,
            url: format!("http://{addr}"),
            clock,
            server_tag: state.identity.public_key().to_owned(),
            state,
            dir,
            sign_up_invite,
            metrics_url,
            pg,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The stored row of a registered `user`.
    pub async fn user_row(&self, user: &TestUser) -> piqchat_inbox::store::UserRow {
        self.state
            .store
            .user_by_key(&user.key.user_id())
            .await
            .expect("the database answers")
            .expect("the user is registered")
    }

    pub fn db_path(&self) -> &Path {
        &self.state.config.database_path
    }

    /// Stored attachments (not uploads in progress), counted through the
    /// Blobs API so the same assertions hold for a folder and a bucket.
    pub async fn attachment_files(&self) -> usize {
        self.state
            .blobs
            .files()
            .await
            .expect("listing the attachments")
            .len()
    }

    /// A new user with a fresh key (not registered).
    pub fn user(&self) -> TestUser {
        TestUser::new(self, UserKey::generate())
    }

    /// A new user, registered through a fresh sign-up invite.
    pub async fn registered_user(&self) -> TestUser {
        let user = self.user();
        self.sign_up(&user).await;
        user
    }

    /// Alice, and Bob who accepts parcels from her; both registered.
    pub async fn pair(&self) -> (TestUser, TestUser) {
        let alice = self.registered_user().await;
        let bob = self.registered_user().await;
        bob.set_contacts(&[&alice]).await;
        (alice, bob)
    }

    /// Registers `user` here through a fresh sign-up invite, over gRPC.
    pub async fn sign_up(&self, user: &TestUser) {
        let link = exchanges::create_sign_up_invite(
            &self.state.store,
            &self.state.config,
            self.clock.now(),
        )
        .await
        .expect("invite");
        let reply = self
            .exchanges()
            .await
            .accept_exchange(pb::AcceptExchangeRequest {
                token: token_of_link(&link),
                answer: None,
                user_id: Some(user.id()),
            })
            .await
            .expect("sign-up")
            .into_inner();
        assert_eq!(reply.sign_up(), pb::SignUpResult::Created);
    }

    pub async fn exchanges(
        &self,
    ) -> pb::exchange_service_client::ExchangeServiceClient<tonic::transport::Channel> {
        pb::exchange_service_client::ExchangeServiceClient::new(self.channel().await)
    }

    /// An unsigned HTTP client.
    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.url, None)
    }

    /// An unsigned gRPC channel.
    pub async fn channel(&self) -> tonic::transport::Channel {
        client::connect_anonymous(&self.url).await.expect("connect")
    }

    pub async fn info(
        &self,
    ) -> pb::info_service_client::InfoServiceClient<tonic::transport::Channel> {
        pb::info_service_client::InfoServiceClient::new(self.channel().await)
    }

    /// GetInfo over unsigned gRPC.
    pub async fn get_info(&self) -> pb::GetInfoResponse {
        self.info()
            .await
            .get_info(pb::GetInfoRequest {})
            .await
            .expect("GetInfo answers")
            .into_inner()
    }

    /// Stops the server and starts a new one on the same files, config and
    /// clock (a new port).
    pub async fn restart(self) -> TestApp {
        self.restart_with(|_| {}).await
    }

    /// Like [`restart`](Self::restart), with the configuration adjusted.
    pub async fn restart_with(self, adjust: impl FnOnce(&mut Config)) -> TestApp {
        let dir = self.dir.clone();
        let mut config = (*self.state.config).clone();
        adjust(&mut config);
        let clock = self.clock.clone();
        let pg = self.pg.clone();
        self.stop().await;
        Self::start(dir, config, clock, pg).await
    }

    /// A server with Web Push on, sending to a push-service stand-in (allowed
    /// through the endpoint guard as a plain-HTTP origin).
    pub async fn spawn_with_push(adjust: impl FnOnce(&mut Config)) -> (TestApp, PushService) {
        let app = Self::spawn().await;
        let vapid = app.get_info().await.vapid_public_key;
        let service = PushService::start(vapid).await;
        let origin = service.origin();
        let app = app
            .restart_with(|c| {
                c.push_vapid_contact = Some("mailto:ops@example.org".into());
                c.push_allowed_insecure_origins = origin;
                adjust(c);
            })
            .await;
        (app, service)
    }

    /// Stops the server and waits until it has finished.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .expect("server task")
                .expect("server ran cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// With `PIQCHAT_TEST_S3_URL` set (an S3 endpoint and bucket, e.g.
/// `http://127.0.0.1:55433/piqchat-test`; the bucket must exist, `.ci/services`
/// creates it), each server gets its own random prefix in that bucket;
/// unset, attachments stay in the test's temp folder. `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY` default to `test` (any key works on moto).
pub fn test_bucket() -> Option<piqchat_inbox::blobs::S3Settings> {
    let url = std::env::var("PIQCHAT_TEST_S3_URL")
        .ok()
        .filter(|v| !v.is_empty())?;
    let (endpoint, bucket) = url
        .trim_end_matches('/')
        .rsplit_once('/')
        .filter(|(e, _)| e.contains("://"))
        .expect("PIQCHAT_TEST_S3_URL: expected http://host:port/bucket");
    let prefix = format!("it-{}", uuid::Uuid::new_v4().simple());
    let get = |var: &str| match var {
        "AWS_ENDPOINT_URL" => Some(endpoint.to_owned()),
        "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => {
            Some(std::env::var(var).unwrap_or_else(|_| "test".into()))
        }
        _ => std::env::var(var).ok().filter(|v| !v.is_empty()),
    };
    let settings =
        piqchat_inbox::blobs::S3Settings::parse(&format!("s3://{bucket}/{prefix}"), &get)
            .unwrap_or_else(|(var, message)| panic!("PIQCHAT_TEST_S3_URL: {var}: {message}"));
    Some(settings)
}

/// A database of its own for one test on the PostgreSQL server named by
/// `PIQCHAT_TEST_DATABASE_URL`; dropped (best effort) with the last
/// instance that uses it.
pub struct TestDatabase {
    admin: piqchat_inbox::store::PgTarget,
    pub target: piqchat_inbox::store::PgTarget,
}

/// The PostgreSQL server the suite runs against, if any.
pub fn test_database_url() -> Option<String> {
    std::env::var("PIQCHAT_TEST_DATABASE_URL")
        .ok()
        .filter(|v| !v.is_empty())
}

impl TestDatabase {
    /// `None` when the suite runs on SQLite.
    pub async fn create() -> Option<TestDatabase> {
        use sqlx::Connection as _;
        let url = test_database_url()?;
        let admin = piqchat_inbox::store::PgTarget::parse(&url)
            .expect("PIQCHAT_TEST_DATABASE_URL is a PostgreSQL URL");
        let name = format!("piqchat_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect_with(&admin.connect_options())
            .await
            .expect("the test PostgreSQL server answers");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        Some(TestDatabase {
            target: admin.with_database(&name),
            admin,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let (admin, name) = (
            self.admin.connect_options(),
            self.target.database().to_owned(),
        );
        // Drop runs inside the test's runtime: a thread with a runtime of
        // its own, waited for, so that the database is gone before the
        // test ends. FORCE ends the connections of an instance still
        // shutting down.
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                if let Ok(mut conn) = sqlx::PgConnection::connect_with(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
            });
        });
        let _ = done.join();
    }
}

/// The exchange token inside an invite link or accept URL.
pub fn token_of_link(link: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(link).decode_utf8_lossy();
    let at = decoded.find("/v1/exchanges/").expect("an accept URL") + "/v1/exchanges/".len();
    decoded[at..at + 36].to_owned()
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A user with a key, signing for one server.
#[derive(Clone)]
pub struct TestUser {
    pub key: UserKey,
    pub signer: RequestSigner,
    pub url: String,
}

impl TestUser {
    pub fn new(app: &TestApp, key: UserKey) -> Self {
        let signer = RequestSigner::new(key.clone(), app.server_tag.clone())
            .with_clock(app.clock.clone())
            .covering(&["x-client-version"]);
        TestUser {
            key,
            signer,
            url: app.url.clone(),
        }
    }

    pub fn id(&self) -> String {
        self.key.user_id().to_string()
    }

    /// A signing gRPC channel.
    pub async fn channel(&self) -> SignedChannel {
        client::connect(&self.url, self.signer.clone())
            .await
            .expect("connect")
    }

    /// A signing HTTP client (gRPC-web and JSON).
    pub fn http(&self) -> HttpClient {
        HttpClient::new(&self.url, Some(self.signer.clone()))
    }

    pub async fn accounts(
        &self,
    ) -> pb::account_service_client::AccountServiceClient<SignedChannel> {
        pb::account_service_client::AccountServiceClient::new(self.channel().await)
    }

    pub async fn exchanges(
        &self,
    ) -> pb::exchange_service_client::ExchangeServiceClient<SignedChannel> {
        pb::exchange_service_client::ExchangeServiceClient::new(self.channel().await)
    }

    /// Creates a friend invite with `offer` as the card; returns its token.
    pub async fn create_invite(&self, offer: &str) -> String {
        self.exchanges()
            .await
            .create_exchange(pb::CreateExchangeRequest {
                offer: offer.into(),
            })
            .await
            .expect("create exchange")
            .into_inner()
            .token
    }

    pub async fn parcels(&self) -> pb::parcel_service_client::ParcelServiceClient<SignedChannel> {
        pb::parcel_service_client::ParcelServiceClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn backups(&self) -> pb::backup_service_client::BackupServiceClient<SignedChannel> {
        pb::backup_service_client::BackupServiceClient::new(self.channel().await)
    }

    /// Replaces this user's whitelist with `contacts`.
    pub async fn set_contacts(&self, contacts: &[&TestUser]) {
        self.accounts()
            .await
            .set_contacts(pb::SetContactsRequest {
                contact_ids: contacts.iter().map(|c| c.id()).collect(),
            })
            .await
            .expect("set contacts");
    }

    /// Stores `subscription` (browser JSON) through the signed JSON shim.
    pub async fn put_push_subscription(
        &self,
        subscription: &serde_json::Value,
    ) -> piqchat_inbox::client::HttpReply {
        self.http()
            .json(
                http::Method::PUT,
                "/v1/account/push-subscription",
                Some(subscription),
            )
            .await
            .expect("the request reaches the server")
    }

    /// Sends a parcel of `kind` to `recipients` (each gets `content-<i>`).
    pub async fn send(
        &self,
        kind: &str,
        recipients: &[&TestUser],
        attachment: Option<Vec<u8>>,
    ) -> Result<pb::SendParcelResponse, tonic::Status> {
        self.parcels()
            .await
            .send_parcel(pb::SendParcelRequest {
                r#type: kind.into(),
                recipients: recipients
                    .iter()
                    .enumerate()
                    .map(|(i, r)| pb::ParcelRecipient {
                        user_id: r.id(),
                        content: format!("content-{i}"),
                    })
                    .collect(),
                attachment,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    pub async fn list(&self) -> Vec<pb::Parcel> {
        self.parcels()
            .await
            .list_parcels(pb::ListParcelsRequest::default())
            .await
            .expect("list parcels")
            .into_inner()
            .parcels
    }

    pub async fn info(&self) -> pb::info_service_client::InfoServiceClient<SignedChannel> {
        pb::info_service_client::InfoServiceClient::new(self.channel().await)
    }
}

/// A push subscription exactly as a browser's `PushSubscription.toJSON()`
/// gives it, with a freshly generated P-256 key.
pub fn browser_subscription() -> serde_json::Value {
    use base64::Engine as _;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret =
        p256::SecretKey::from_slice(&piqchat_inbox::identity::random_bytes::<32>()).unwrap();
    let point = secret.public_key().to_encoded_point(false);
    serde_json::json!({
        "endpoint": "https://fcm.googleapis.com/fcm/send/dY3n:APA91bH",
        "expirationTime": null,
        "keys": {
            "p256dh": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(point.as_bytes()),
            "auth": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(piqchat_inbox::identity::random_bytes::<16>()),
        }
    })
}

/// An exact copy of a request (same signature headers): a replay.
pub fn clone_request(
    req: &http::Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut copy = http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .body(req.body().clone())
        .unwrap();
    *copy.headers_mut() = req.headers().clone();
    copy
}
