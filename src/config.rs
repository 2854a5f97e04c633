//! Typed configuration, read once from the environment (and an optional
//! `.env`, loaded by `main`). Every error names the variable to fix.

use std::{fmt, net::IpAddr, path::PathBuf};

use crate::domain::UserId;

/// The effective configuration of one server instance.
#[derive(Clone)]
pub struct Config {
    /// Address the server binds to (`BIND_ADDRESS`).
    pub bind_address: IpAddr,
    /// TCP port (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Where `/metrics` is served (`METRICS_ADDRESS`); `None` when "off".
    /// Loopback by default, so it is not public by accident.
    pub metrics_address: Option<std::net::SocketAddr>,
    /// SQLite database file (`DATABASE_PATH`, or `DATABASE_URL=sqlite:PATH`);
    /// used when `database_url` is `None`.
    pub database_path: PathBuf,
    /// A PostgreSQL database instead of the SQLite file (`DATABASE_URL`
    /// with `postgres://` or `postgresql://`).
    pub database_url: Option<crate::store::PgTarget>,
    /// Connections in the PostgreSQL pool (`DATABASE_MAX_CONNECTIONS`).
    pub database_max_connections: u32,
    /// Folder for attachment files (`PARCEL_ATTACHMENTS_UPLOAD_PATH`, or a
    /// path / `file:` URL in `ATTACHMENT_STORE_URL`); unused with a bucket.
    pub attachments_path: PathBuf,
    /// The bucket attachments go to instead (`ATTACHMENT_STORE_URL=s3://…`
    /// and the `AWS_*` variables).
    pub attachments_s3: Option<crate::blobs::S3Settings>,
    /// Built-in TLS: PEM certificate chain and key (`TLS_CERT_PATH`,
    /// `TLS_KEY_PATH`); both or neither.
    pub tls_cert_path: Option<PathBuf>,
    pub tls_key_path: Option<PathBuf>,
    /// How often the TLS files are checked for changes
    /// (`TLS_RELOAD_INTERVAL_SECONDS`); SIGHUP reloads at once.
    pub tls_reload_interval_secs: u32,
    /// Public base URL, e.g. `https://inbox.example.org` (`PUBLIC_URL`).
    pub public_url: Option<String>,
    pub admin_display_name: String,
    pub admin_message: String,
    /// The admin's user id (`ADMIN_ID`, or the historical `ADMIN_UUID`).
    pub admin_id: Option<UserId>,
    pub privacy_policy_url: String,
    /// VAPID subject; push is disabled when absent (`PUSH_VAPID_CONTACT`).
    pub push_vapid_contact: Option<String>,
    pub push_ttl_days: u32,
    /// `http://host:port` origins push may go to despite the guard
    /// (`PUSH_ALLOWED_INSECURE_ORIGINS`; for tests and local push services).
    pub push_allowed_insecure_origins: String,
    /// Longest a push request may take (`PUSH_REQUEST_TIMEOUT_SECONDS`).
    pub push_request_timeout_secs: u32,
    /// Pushes sent at once (`PUSH_CONCURRENCY`).
    pub push_concurrency: u32,
    pub exchange_ttl_minutes: u32,
    /// Force a fresh sign-up invite at start (`CREATE_SIGN_UP_INVITE`).
    pub create_sign_up_invite: bool,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT
    /// (`SHUTDOWN_GRACE_SECONDS`).
    pub shutdown_grace_secs: u32,
    /// Which RPC calls get a log line (`LOG_REQUESTS`).
    pub request_log: RequestLog,
    /// Allowed distance between a signature's `created` and the server clock.
    pub signature_max_skew_secs: u32,
    /// Live (key, nonce) pairs remembered for replay protection, per class
    /// of key, and per key.
    pub nonce_budgets: NonceBudgets,
    pub limits: Limits,
    pub retention: Retention,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` name the client
    /// (`TRUSTED_PROXIES`); from anyone else those headers are ignored.
    pub trusted_proxies: crate::api::peer::TrustedProxies,
    /// The rate limits (`RATE_LIMIT_*`, `RATE_LIMITS=off`), see `api::limits`.
    pub rate_limits: crate::api::limits::RateLimits,
    pub connections: Connections,
}

/// What one connection may hold, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connections {
    /// Open connections in total (`MAX_CONNECTIONS`); `None` sizes it from
    /// the file-descriptor limit at start.
    pub max_total: Option<u32>,
    /// Open connections per client address, IPv6 by /64
    /// (`MAX_CONNECTIONS_PER_IP`).
    pub max_per_ip: u32,
    /// A connection without a request in progress is closed after this long
    /// (`CONNECTION_IDLE_TIMEOUT_SECONDS`).
    pub idle_timeout_secs: u32,
    /// Longest a request's headers may take to arrive, counted for the first
    /// request from when the connection opens (`REQUEST_HEADER_TIMEOUT_SECONDS`).
    pub header_timeout_secs: u32,
    /// Longest a request body may go without a byte arriving
    /// (`REQUEST_BODY_TIMEOUT_SECONDS`).
    pub body_timeout_secs: u32,
    /// Streams one HTTP/2 connection may have open (`HTTP2_MAX_CONCURRENT_STREAMS`).
    pub http2_max_streams: u32,
    /// Body bytes read and discarded after an early HTTP/1.1 answer, so the
    /// client can read it and keep the connection
    /// (`REFUSED_BODY_DRAIN_BYTES`).
    pub drain_bytes: u64,
    /// Longest that draining, and the lingering close after an answer sent
    /// before the body was read, may take (`REFUSED_BODY_DRAIN_SECONDS`).
    pub drain_secs: u32,
}

/// How many live nonces the replay protection holds (see `api::replay`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NonceBudgets {
    /// Keys with an account here (`NONCE_BUDGET_REGISTERED`).
    pub registered: usize,
    /// Keys some registered user accepts as a sender (`NONCE_BUDGET_CONTACTS`).
    pub contacts: usize,
    /// Every other key (`NONCE_BUDGET_UNKNOWN`).
    pub unknown: usize,
    /// Live nonces of one key (`NONCE_MAX_PER_KEY`).
    pub per_key: u32,
}

/// What is forgotten when, and the database backups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub parcel_max_age_days: u32,
    pub exchange_max_age_days: u32,
    pub user_inactive_days: u32,
    /// Minutes after midnight UTC of the daily run (`RETENTION_RUN_AT_UTC`).
    pub run_at_minute: u32,
    /// Run every N minutes instead of daily (`RETENTION_INTERVAL_MINUTES`).
    pub interval_minutes: Option<u32>,
    /// Folder for scheduled database backups; none when unset.
    pub backup_path: Option<PathBuf>,
    pub backup_keep_days: u32,
}

/// Sizes and counts a request must stay within.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_attachment_bytes: u32,
    pub max_content_bytes: u32,
    pub max_recipients: u32,
    pub max_exchange_card_bytes: u32,
    pub max_backup_bytes: u32,
    pub max_contacts: u32,
    /// Parcels that may wait for one recipient.
    pub max_waiting_parcels: u32,
    /// Attachment bytes that may wait for one recipient.
    pub max_waiting_attachment_bytes: u64,
    /// New attachments are refused when less disk space than this is free.
    pub min_free_disk_bytes: u64,
    /// Large requests (parcel sends) handled at once; more wait their turn.
    pub max_concurrent_uploads: u32,
    /// Longest an upload may take once it has its turn.
    pub upload_timeout_secs: u32,
    /// Uploads of one client address (IPv6 by /64) handled at once.
    pub max_concurrent_uploads_per_client: u32,
    /// Least average upload rate, checked after the grace period; 0: none.
    pub min_upload_bytes_per_second: u32,
    pub upload_rate_grace_secs: u32,
}

/// Which RPC calls `api::observe` logs; metrics count every call either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestLog {
    /// One line per call (the default).
    All,
    /// Only calls that did not end `OK`, or took at least
    /// `api::observe::SLOW_CALL`: a busy server's log stays readable and
    /// costs less.
    ErrorsAndSlow,
}

/// A configuration value that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the
    /// process environment. Empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let admin_id = match env.get("ADMIN_ID") {
            Some(v) => Some(parse_user_id("ADMIN_ID", &v)?),
            None => match env.get("ADMIN_UUID") {
                Some(v) => Some(parse_user_id("ADMIN_UUID", &v)?),
                None => None,
            },
        };
        let push_vapid_contact = env
            .get("PUSH_VAPID_CONTACT")
            .map(|v| check_vapid_contact(&v).map(|()| v))
            .transpose()?;
        match (env.get("TLS_CERT_PATH"), env.get("TLS_KEY_PATH")) {
            (Some(_), None) => {
                return Err(ConfigError {
                    var: "TLS_KEY_PATH",
                    message: "required when TLS_CERT_PATH is set".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    var: "TLS_CERT_PATH",
                    message: "required when TLS_KEY_PATH is set".into(),
                });
            }
            _ => {}
        }
        let (database_path, database_url) = database(&env)?;
        let (attachments_path, attachments_s3) = attachment_store(&env)?;
        let public_url = env
            .get("PUBLIC_URL")
            .map(|v| check_public_url(&v))
            .transpose()?;
        Ok(Config {
            bind_address: env.parse("BIND_ADDRESS", "0.0.0.0".parse().expect("literal"))?,
            port: env.parse("PORT", 8080)?,
            metrics_address: match env.get("METRICS_ADDRESS").as_deref() {
                Some("off") => None,
                Some(v) => Some(v.parse().map_err(|_| ConfigError {
                    var: "METRICS_ADDRESS",
                    message: format!("expected an address like 127.0.0.1:9464, or off; got {v:?}"),
                })?),
                None => Some("127.0.0.1:9464".parse().expect("literal")),
            },
            database_path,
            database_url,
            database_max_connections: env.ranged("DATABASE_MAX_CONNECTIONS", 16, 1, 1000)?,
            attachments_path,
            attachments_s3,
            public_url,
            tls_cert_path: env.get("TLS_CERT_PATH").map(PathBuf::from),
            tls_key_path: env.get("TLS_KEY_PATH").map(PathBuf::from),
            tls_reload_interval_secs: env.ranged("TLS_RELOAD_INTERVAL_SECONDS", 30, 1, 86_400)?,
            admin_display_name: env.get("ADMIN_DISPLAY_NAME").unwrap_or_default(),
            // Operators write line breaks as a literal `\n` in env files.
            admin_message: env
                .get("ADMIN_MESSAGE")
                .unwrap_or_default()
                .replace("\\n", "\n"),
            admin_id,
            privacy_policy_url: env.get("ADMIN_PRIVACY_POLICY_URL").unwrap_or_default(),
            push_vapid_contact,
            push_ttl_days: env.ranged("PUSH_TIME_TO_LIVE_ON_SERVICE_IN_DAYS", 3, 1, 28)?,
            push_allowed_insecure_origins: {
                let value = env.get("PUSH_ALLOWED_INSECURE_ORIGINS").unwrap_or_default();
                crate::push::guard::EndpointGuard::new(&value).map_err(|message| ConfigError {
                    var: "PUSH_ALLOWED_INSECURE_ORIGINS",
                    message,
                })?;
                value
            },
            push_request_timeout_secs: env.ranged("PUSH_REQUEST_TIMEOUT_SECONDS", 15, 1, 300)?,
            push_concurrency: env.ranged("PUSH_CONCURRENCY", 8, 1, 256)?,
            exchange_ttl_minutes: env.ranged(
                "CONTACT_EXCHANGE_TIME_TO_LIVE_IN_MIN",
                60,
                1,
                7 * 24 * 60,
            )?,
            create_sign_up_invite: env.parse_bool("CREATE_SIGN_UP_INVITE", false)?,
            shutdown_grace_secs: env.ranged("SHUTDOWN_GRACE_SECONDS", 30, 1, 3600)?,
            request_log: match env
                .get("LOG_REQUESTS")
                .map(|v| v.to_ascii_lowercase())
                .as_deref()
            {
                None | Some("all") => RequestLog::All,
                Some("errors") => RequestLog::ErrorsAndSlow,
                Some(other) => {
                    return Err(ConfigError {
                        var: "LOG_REQUESTS",
                        message: format!("expected all or errors, got {other:?}"),
                    });
                }
            },
            signature_max_skew_secs: env.ranged("SIGNATURE_MAX_SKEW_SECONDS", 300, 5, 3600)?,
            nonce_budgets: nonce_budgets(&env)?,
            limits: Limits {
                max_attachment_bytes: env.ranged("MAX_ATTACHMENT_BYTES", 20 << 20, 1, 256 << 20)?,
                max_content_bytes: env.ranged("MAX_CONTENT_BYTES", 64 << 10, 1, 1 << 20)?,
                max_recipients: env.ranged("MAX_RECIPIENTS", 100, 1, 1000)?,
                max_exchange_card_bytes: env.ranged(
                    "MAX_EXCHANGE_CARD_BYTES",
                    64 << 10,
                    1,
                    1 << 20,
                )?,
                max_backup_bytes: env.ranged("MAX_BACKUP_BYTES", 1 << 20, 1, 16 << 20)?,
                max_contacts: env.ranged("MAX_CONTACTS", 5000, 1, 100_000)?,
                max_waiting_parcels: env.ranged(
                    "MAX_WAITING_PARCELS_PER_RECIPIENT",
                    1000,
                    1,
                    1_000_000,
                )?,
                max_waiting_attachment_bytes: env.ranged64(
                    "MAX_WAITING_ATTACHMENT_BYTES_PER_RECIPIENT",
                    1 << 30,
                    1,
                    1 << 40,
                )?,
                min_free_disk_bytes: env.ranged64("MIN_FREE_DISK_BYTES", 256 << 20, 0, 1 << 50)?,
                max_concurrent_uploads: env.ranged("MAX_CONCURRENT_UPLOADS", 8, 1, 1024)?,
                upload_timeout_secs: env.ranged("UPLOAD_TIMEOUT_SECONDS", 120, 1, 3600)?,
                max_concurrent_uploads_per_client: env.ranged(
                    "MAX_CONCURRENT_UPLOADS_PER_CLIENT",
                    4,
                    1,
                    1024,
                )?,
                min_upload_bytes_per_second: env.ranged(
                    "MIN_UPLOAD_BYTES_PER_SECOND",
                    32 << 10,
                    0,
                    1 << 30,
                )?,
                upload_rate_grace_secs: env.ranged("UPLOAD_RATE_GRACE_SECONDS", 10, 1, 3600)?,
            },
            retention: Retention {
                parcel_max_age_days: env.ranged("PARCEL_MAX_AGE_DAYS", 90, 1, 3650)?,
                exchange_max_age_days: env.ranged("EXCHANGE_MAX_AGE_DAYS", 7, 1, 3650)?,
                user_inactive_days: env.ranged("USER_INACTIVE_DAYS", 365, 1, 36500)?,
                run_at_minute: parse_time_of_day(
                    env.get("RETENTION_RUN_AT_UTC")
                        .as_deref()
                        .unwrap_or("04:00"),
                )?,
                interval_minutes: match env.get("RETENTION_INTERVAL_MINUTES") {
                    None => None,
                    Some(_) => Some(env.ranged("RETENTION_INTERVAL_MINUTES", 1440, 1, 7 * 1440)?),
                },
                backup_path: env.get("BACKUP_PATH").map(PathBuf::from),
                backup_keep_days: env.ranged("BACKUP_KEEP_DAYS", 7, 1, 3650)?,
            },
            trusted_proxies: crate::api::peer::TrustedProxies::parse(
                &env.get("TRUSTED_PROXIES").unwrap_or_default(),
            )
            .map_err(|message| ConfigError {
                var: "TRUSTED_PROXIES",
                message,
            })?,
            rate_limits: {
                let max_keys = env.ranged(
                    "RATE_LIMIT_MAX_KEYS",
                    crate::api::limits::DEFAULT_MAX_KEYS,
                    100,
                    10_000_000,
                )?;
                let limits = crate::api::limits::RateLimits::parse(|var| env.get(var), max_keys)?;
                if env.parse_bool("RATE_LIMITS", true)? {
                    limits
                } else {
                    let mut off = crate::api::limits::RateLimits::off();
                    off.max_keys = max_keys;
                    off
                }
            },
            connections: Connections {
                max_total: match env.get("MAX_CONNECTIONS") {
                    None => None,
                    Some(_) => Some(env.ranged("MAX_CONNECTIONS", 1024, 16, 10_000_000)?),
                },
                max_per_ip: env.ranged("MAX_CONNECTIONS_PER_IP", 128, 1, 10_000_000)?,
                idle_timeout_secs: env.ranged("CONNECTION_IDLE_TIMEOUT_SECONDS", 180, 1, 86_400)?,
                header_timeout_secs: env.ranged("REQUEST_HEADER_TIMEOUT_SECONDS", 30, 1, 3600)?,
                body_timeout_secs: env.ranged("REQUEST_BODY_TIMEOUT_SECONDS", 30, 1, 3600)?,
                http2_max_streams: env.ranged("HTTP2_MAX_CONCURRENT_STREAMS", 100, 1, 10_000)?,
                drain_bytes: env.ranged64("REFUSED_BODY_DRAIN_BYTES", 4 << 20, 0, 1 << 30)?,
                drain_secs: env.ranged("REFUSED_BODY_DRAIN_SECONDS", 5, 1, 300)?,
            },
        })
    }

    /// The database this configuration selects.
    pub fn database_target(&self) -> crate::store::DatabaseTarget {
        match &self.database_url {
            Some(pg) => crate::store::DatabaseTarget::Postgres(Box::new(pg.clone())),
            None => crate::store::DatabaseTarget::Sqlite(self.database_path.clone()),
        }
    }

    /// A configuration for tests and tools: defaults, files under `dir`.
    pub fn for_dir(dir: &std::path::Path) -> Self {
        let mut config = Self::from_lookup(|_| None).expect("defaults are valid");
        config.bind_address = "127.0.0.1".parse().expect("literal");
        config.port = 0;
        config.metrics_address = Some("127.0.0.1:0".parse().expect("literal"));
        config.database_path = dir.join("inbox.sqlite");
        config.attachments_path = dir.join("attachments");
        // Tests drive one address and a few keys at full speed; the rate
        // limit tests turn on the limits they are about.
        config.rate_limits = crate::api::limits::RateLimits::off();
        config
    }
}

// Nothing here is secret today; Debug is written by hand so that a future
// secret field has to be considered here rather than leaking by derive.
impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("bind_address", &self.bind_address)
            .field("port", &self.port)
            .field("metrics_address", &self.metrics_address)
            .field("database", &self.database_target())
            .field("database_max_connections", &self.database_max_connections)
            .field("attachments_path", &self.attachments_path)
            .field("attachments_s3", &self.attachments_s3)
            .field("public_url", &self.public_url)
            .field("tls_cert_path", &self.tls_cert_path)
            .field("tls_key_path", &self.tls_key_path)
            .field("tls_reload_interval_secs", &self.tls_reload_interval_secs)
            .field("admin_display_name", &self.admin_display_name)
            .field("admin_message", &self.admin_message)
            .field("admin_id", &self.admin_id.as_ref().map(UserId::short))
            .field("privacy_policy_url", &self.privacy_policy_url)
            .field("push_vapid_contact", &self.push_vapid_contact)
            .field("push_ttl_days", &self.push_ttl_days)
            .field(
                "push_allowed_insecure_origins",
                &self.push_allowed_insecure_origins,
            )
            .field("push_request_timeout_secs", &self.push_request_timeout_secs)
            .field("push_concurrency", &self.push_concurrency)
            .field("exchange_ttl_minutes", &self.exchange_ttl_minutes)
            .field("create_sign_up_invite", &self.create_sign_up_invite)
            .field("shutdown_grace_secs", &self.shutdown_grace_secs)
            .field("request_log", &self.request_log)
            .field("signature_max_skew_secs", &self.signature_max_skew_secs)
            .field("nonce_budgets", &self.nonce_budgets)
            .field("limits", &self.limits)
            .field("retention", &self.retention)
            .field("connections", &self.connections)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("rate_limits", &self.rate_limits)
            .finish()
    }
}

/// `DATABASE_URL` (a PostgreSQL URL, or `sqlite:PATH`) and `DATABASE_PATH`:
/// the SQLite path and, when PostgreSQL is selected, its target.
fn database(env: &Env<'_>) -> Result<(PathBuf, Option<crate::store::PgTarget>), ConfigError> {
    let path = env.path("DATABASE_PATH", "data/inbox.sqlite");
    let Some(url) = env.get("DATABASE_URL") else {
        return Ok((path, None));
    };
    let error = |message: String| ConfigError {
        var: "DATABASE_URL",
        message,
    };
    if let Some(file) = url.strip_prefix("sqlite:") {
        let file = file.strip_prefix("//").unwrap_or(file);
        if file.is_empty() {
            return Err(error(
                "sqlite: needs a file path, e.g. sqlite:data/inbox.sqlite".into(),
            ));
        }
        return Ok((PathBuf::from(file), None));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let target = crate::store::PgTarget::parse(&url).map_err(error)?;
        return Ok((path, Some(target)));
    }
    // Never echo the value: it may hold a password.
    Err(error(
        "expected postgres://USER@HOST:PORT/DATABASE (or postgresql://), or sqlite:PATH; \
         leave unset for the SQLite file at DATABASE_PATH"
            .into(),
    ))
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn path(&self, var: &str, default: &str) -> PathBuf {
        PathBuf::from(self.get(var).unwrap_or_else(|| default.to_owned()))
    }

    fn parse<T: std::str::FromStr>(&self, var: &'static str, default: T) -> Result<T, ConfigError> {
        match self.get(var) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| ConfigError {
                var,
                message: format!("cannot parse {v:?}"),
            }),
        }
    }

    fn ranged(
        &self,
        var: &'static str,
        default: u32,
        min: u32,
        max: u32,
    ) -> Result<u32, ConfigError> {
        self.ranged64(var, default.into(), min.into(), max.into())
            .map(|v| v as u32)
    }

    fn ranged64(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<u64, ConfigError> {
        let value: u64 = self.parse(var, default).map_err(|_| ConfigError {
            var,
            message: format!("expected a whole number from {min} to {max}"),
        })?;
        if value < min || value > max {
            return Err(ConfigError {
                var,
                message: format!("{value} is out of range; expected {min} to {max}"),
            });
        }
        Ok(value)
    }

    fn parse_bool(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self
            .get(var)
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None => Ok(default),
            Some("1" | "true" | "yes" | "on") => Ok(true),
            Some("0" | "false" | "no" | "off") => Ok(false),
            Some(other) => Err(ConfigError {
                var,
                message: format!("expected true or false, got {other:?}"),
            }),
        }
    }
}

/// The nonce budgets. `REPLAY_CACHE_MAX_ENTRIES`, the single budget of
/// earlier versions, still sets the total when given: split 5 : 1 : 1, unless
/// a class's own variable is set.
fn nonce_budgets(env: &Env) -> Result<NonceBudgets, ConfigError> {
    let total = match env.get("REPLAY_CACHE_MAX_ENTRIES") {
        Some(_) => env.ranged("REPLAY_CACHE_MAX_ENTRIES", 700_000, 1_000, 50_000_000)?,
        None => 700_000,
    };
    let share = |parts: u32| total / 7 * parts;
    Ok(NonceBudgets {
        registered: env.ranged("NONCE_BUDGET_REGISTERED", share(5), 100, 50_000_000)? as usize,
        contacts: env.ranged("NONCE_BUDGET_CONTACTS", share(1), 100, 50_000_000)? as usize,
        unknown: env.ranged("NONCE_BUDGET_UNKNOWN", share(1), 100, 50_000_000)? as usize,
        per_key: env.ranged("NONCE_MAX_PER_KEY", 10_000, 10, 10_000_000)?,
    })
}

/// `ATTACHMENT_STORE_URL`: unset or `file:` keeps the folder of
/// `PARCEL_ATTACHMENTS_UPLOAD_PATH`; a path or `file:PATH` names the folder;
/// `s3://bucket/prefix` a bucket.
fn attachment_store(env: &Env) -> Result<(PathBuf, Option<crate::blobs::S3Settings>), ConfigError> {
    const VAR: &str = "ATTACHMENT_STORE_URL";
    let folder_var = env.get("PARCEL_ATTACHMENTS_UPLOAD_PATH");
    let folder = env.path("PARCEL_ATTACHMENTS_UPLOAD_PATH", "data/attachments");
    let Some(url) = env.get(VAR) else {
        return Ok((folder, None));
    };
    if url.starts_with("s3://") {
        let s3 = crate::blobs::S3Settings::parse(&url, &|var| env.get(var))
            .map_err(|(var, message)| ConfigError { var, message })?;
        return Ok((folder, Some(s3)));
    }
    let path = match url.strip_prefix("file:") {
        // file:///srv/a and file:/srv/a alike; no host part.
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None if url.contains("://") => {
            return Err(ConfigError {
                var: VAR,
                message: format!(
                    "expected s3://bucket/optional/prefix, file:PATH or a folder path, got {url:?}"
                ),
            });
        }
        None => &url,
    };
    if path.is_empty() {
        return Ok((folder, None));
    }
    let path = PathBuf::from(path);
    if folder_var.is_some() && path != folder {
        return Err(ConfigError {
            var: VAR,
            message: format!(
                "names the folder {} but PARCEL_ATTACHMENTS_UPLOAD_PATH names {}; set only one",
                path.display(),
                folder.display()
            ),
        });
    }
    Ok((path, None))
}

/// `HH:MM` (24-hour clock) to minutes after midnight.
fn parse_time_of_day(value: &str) -> Result<u32, ConfigError> {
    let parsed = value.split_once(':').and_then(|(h, m)| {
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && value.len() == 5).then_some(h * 60 + m)
    });
    parsed.ok_or_else(|| ConfigError {
        var: "RETENTION_RUN_AT_UTC",
        message: format!("expected a time like 04:00, got {value:?}"),
    })
}

fn parse_user_id(var: &'static str, value: &str) -> Result<UserId, ConfigError> {
    UserId::parse(value).map_err(|e| ConfigError {
        var,
        message: e.to_string(),
    })
}

/// Push services (Apple's in particular) reject VAPID subjects that are not a
/// real `mailto:` or `https:` URL.
fn check_vapid_contact(value: &str) -> Result<(), ConfigError> {
    let ok = match value.split_once(':') {
        Some(("mailto", rest)) => rest.contains('@') && !rest.contains(char::is_whitespace),
        Some(("https", rest)) => rest.starts_with("//") && rest.len() > 2,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            var: "PUSH_VAPID_CONTACT",
            message: format!("expected a mailto: or https: URL, got {value:?}"),
        })
    }
}

fn check_public_url(value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim_end_matches('/');
    let parsed: Result<http::Uri, _> = trimmed.parse();
    match parsed {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|p| p.as_str() == "/" || p.as_str().is_empty()) =>
        {
            Ok(trimmed.to_owned())
        }
        _ => Err(ConfigError {
            var: "PUBLIC_URL",
            message: format!("expected an absolute http(s) URL without a path, got {value:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.limits.max_attachment_bytes, 20 << 20);
        assert_eq!(c.exchange_ttl_minutes, 60);
        assert!(c.push_vapid_contact.is_none());
    }

    #[test]
    fn log_requests_is_all_or_errors() {
        assert_eq!(config(&[]).unwrap().request_log, RequestLog::All);
        let c = config(&[("LOG_REQUESTS", "Errors")]).unwrap();
        assert_eq!(c.request_log, RequestLog::ErrorsAndSlow);
        let Err(e) = config(&[("LOG_REQUESTS", "none")]) else {
            panic!("LOG_REQUESTS=none was accepted")
        };
        assert_eq!(e.var, "LOG_REQUESTS");
        assert!(e.message.contains("all or errors"), "{}", e.message);
    }

    #[test]
    fn database_url_selects_the_backend_and_never_shows_the_password() {
        let c = config(&[]).unwrap();
        assert!(c.database_url.is_none());
        assert_eq!(c.database_path, PathBuf::from("data/inbox.sqlite"));
        let c = config(&[("DATABASE_URL", "sqlite:/srv/inbox.sqlite")]).unwrap();
        assert!(c.database_url.is_none());
        assert_eq!(c.database_path, PathBuf::from("/srv/inbox.sqlite"));
        for scheme in ["postgres", "postgresql"] {
            let url =
                format!("{scheme}://inbox:hunter2secret@db.internal:6543/piq?sslmode=require");
            let c = config(&[("DATABASE_URL", &url), ("DATABASE_MAX_CONNECTIONS", "4")]).unwrap();
            assert_eq!(c.database_max_connections, 4);
            let shown = format!("{c:?}");
            assert!(
                shown.contains("postgres://inbox@db.internal:6543/piq (sslmode=require)"),
                "{shown}"
            );
            assert!(!shown.contains("hunter2secret"), "{shown}");
        }
        for bad in ["mysql://u:pw@h/d", "sqlite:", "postgres://u@h:notaport/d"] {
            let e = config(&[("DATABASE_URL", bad)]).unwrap_err();
            assert_eq!(e.var, "DATABASE_URL");
            assert!(!e.message.contains("pw@"), "{}", e.message);
        }
        let e = config(&[("DATABASE_MAX_CONNECTIONS", "0")]).unwrap_err();
        assert_eq!(e.var, "DATABASE_MAX_CONNECTIONS");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value) in [
            ("PORT", "eighty"),
            ("PORT", "70000"),
            ("METRICS_ADDRESS", "everywhere"),
            ("CREATE_SIGN_UP_INVITE", "maybe"),
            ("PUSH_VAPID_CONTACT", "admin@example.org"),
            ("ADMIN_UUID", "not-a-key"),
            ("CONTACT_EXCHANGE_TIME_TO_LIVE_IN_MIN", "0"),
            ("PUBLIC_URL", "ftp://x"),
            ("RETENTION_RUN_AT_UTC", "25:00"),
            ("RETENTION_RUN_AT_UTC", "4:00"),
            ("RETENTION_INTERVAL_MINUTES", "0"),
            ("MAX_CONNECTIONS", "8"),
            ("MAX_CONNECTIONS_PER_IP", "0"),
            ("CONNECTION_IDLE_TIMEOUT_SECONDS", "never"),
            ("REFUSED_BODY_DRAIN_BYTES", "-1"),
            ("TRUSTED_PROXIES", "10.0.0.0/40"),
            ("RATE_LIMIT_KEY_READS", "600"),
            ("RATE_LIMIT_RECIPIENT_ATTACHMENT_BYTES", "4GB/1d"),
            ("RATE_LIMIT_MAX_KEYS", "5"),
            ("RATE_LIMITS", "sometimes"),
        ] {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, var, "{err}");
            assert!(err.to_string().starts_with(var), "{err}");
        }
    }

    #[test]
    fn rate_limits_default_set_and_off() {
        use crate::api::limits::{Limit, Rate, RateLimits};
        let c = config(&[]).unwrap();
        assert_eq!(c.rate_limits, RateLimits::default());
        assert!(c.trusted_proxies.is_empty());
        let c = config(&[
            ("RATE_LIMIT_KEY_READS", "5/10s"),
            ("RATE_LIMIT_IP", "off"),
            ("TRUSTED_PROXIES", "127.0.0.1,::1"),
        ])
        .unwrap();
        let five = Rate {
            burst: 5,
            period: std::time::Duration::from_secs(10),
        };
        assert_eq!(c.rate_limits.get(Limit::KeyReads), Some(five));
        assert_eq!(c.rate_limits.get(Limit::Ip), None);
        assert!(c.rate_limits.get(Limit::KeyWrites).is_some());
        assert!(c.trusted_proxies.contains("::1".parse().unwrap()));
        let c = config(&[("RATE_LIMITS", "off"), ("RATE_LIMIT_KEY_READS", "5/10s")]).unwrap();
        assert_eq!(c.rate_limits.get(Limit::KeyReads), None);
    }

    #[test]
    fn attachment_store_folder_or_bucket() {
        let c = config(&[]).unwrap();
        assert_eq!(c.attachments_path, PathBuf::from("data/attachments"));
        assert!(c.attachments_s3.is_none());
        for url in ["file:", "file:///srv/att", "file:/srv/att", "/srv/att"] {
            let c = config(&[
                ("ATTACHMENT_STORE_URL", url),
                ("PARCEL_ATTACHMENTS_UPLOAD_PATH", "/srv/att"),
            ])
            .unwrap();
            assert_eq!(c.attachments_path, PathBuf::from("/srv/att"), "{url}");
            assert!(c.attachments_s3.is_none());
        }
        let err = config(&[
            ("ATTACHMENT_STORE_URL", "file:/srv/other"),
            ("PARCEL_ATTACHMENTS_UPLOAD_PATH", "/srv/att"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "ATTACHMENT_STORE_URL");
        let c = config(&[
            ("ATTACHMENT_STORE_URL", "s3://inbox-att/prod"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        let s3 = c.attachments_s3.expect("a bucket");
        assert_eq!(
            (s3.bucket.as_str(), s3.prefix.as_str()),
            ("inbox-att", "prod")
        );
        let err = config(&[("ATTACHMENT_STORE_URL", "gs://inbox-att")]).unwrap_err();
        assert_eq!(err.var, "ATTACHMENT_STORE_URL");
        assert!(err.message.contains("s3://"), "{err}");
        let err = config(&[
            ("ATTACHMENT_STORE_URL", "s3://inbox-att"),
            ("AWS_ENDPOINT_URL", "ftp://x"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "AWS_ENDPOINT_URL");
    }

    #[test]
    fn admin_message_line_breaks() {
        let c = config(&[("ADMIN_MESSAGE", "a\\nb")]).unwrap();
        assert_eq!(c.admin_message, "a\nb");
    }
}
