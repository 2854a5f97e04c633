//! The `piqchat-inbox` command: `serve` (the default) and operator commands.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use piqchat_inbox::{
    app::{App, AppState},
    blobs::{self, Blobs, S3Settings},
    client::{HttpClient, RequestSigner, UserKey},
    clock::Clock,
    config::Config,
    domain::exchanges,
};

/// Self-hostable inbox server for piqchat: receives end-to-end-encrypted,
/// self-destructing images for the users who chose it.
///
/// Configuration comes from environment variables and an optional `.env`
/// file in the working directory; see example.env.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Create a sign-up invite and print its link, without starting the
    /// server (a running server on the same database is fine).
    Invite,
    /// Write a consistent copy of the database to FILE while the server may
    /// be running and taking writes. Attachment files are not included.
    /// SQLite only: on PostgreSQL use pg_dump.
    Backup {
        /// The file to create; it must not exist yet.
        file: std::path::PathBuf,
    },
    /// Copy the SQLite database (DATABASE_PATH) into an empty PostgreSQL
    /// database, verifying row counts. Stop the server first. Safe to re-run:
    /// a target that holds data is refused unless --force replaces it.
    Migrate {
        /// The PostgreSQL database, postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE.
        #[arg(long, hide_env_values = true, env = "MIGRATE_TO_DATABASE_URL")]
        to: String,
        /// Empty a target that holds data and copy again.
        #[arg(long)]
        force: bool,
    },
    /// Validate the configuration and print the effective values.
    CheckConfig,
    /// Copy the attachments folder (PARCEL_ATTACHMENTS_UPLOAD_PATH) into an
    /// S3-compatible bucket, checking every size; the AWS_* variables say how
    /// to reach it. Attachments already there with the same size are skipped,
    /// so an interrupted copy can be run again (with --force). Stop the
    /// server first, or run again after stopping it, so that no attachment
    /// written meanwhile is left behind; then set ATTACHMENT_STORE_URL.
    MigrateAttachments {
        /// The target, e.g. s3://bucket/optional/prefix.
        #[arg(long)]
        to: String,
        /// Copy even though the target already holds attachments.
        #[arg(long)]
        force: bool,
    },
    /// Make a new user key for debugging: prints the secret key and the user id.
    Keygen,
    /// Print the Signature-Input and Signature headers for one request, one
    /// per line: a header file for `buf curl -H @FILE`, or lines for
    /// `grpcurl -rpc-header` and `curl -H` (see README and docs/AUTH.md).
    Sign {
        /// The secret key (unpadded base64url, as `keygen` prints it).
        #[arg(
            long,
            env = "PIQCHAT_SECRET_KEY",
            hide_env_values = true,
            allow_hyphen_values = true
        )]
        key: String,
        /// The HTTP method: POST for gRPC and gRPC-web calls.
        #[arg(long, default_value = "POST")]
        method: String,
        /// The full URL, e.g. http://localhost:8080/piqchat.inbox.v1.AccountService/GetAccount
        /// or http://localhost:8080/v1/account.
        #[arg(long)]
        url: String,
        /// The server's public key (GetInfo's server_public_key); fetched
        /// from the URL's server when not given.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Print the OpenAPI 3.1 document of the HTTP/JSON API (the one the
    /// server serves at /openapi.json).
    Openapi,
    /// Check that the server on this machine answers GET /healthz (for
    /// container health checks; the image has no curl). Uses BIND_ADDRESS
    /// and PORT; exits non-zero when unhealthy.
    Healthcheck,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => return Err(e).context("reading .env"),
    }
    // Held to the end of main: dropping it flushes the log lines in flight.
    let _log_flush = init_logging()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(Config::from_env()?)),
        Command::Invite => runtime.block_on(invite(Config::from_env()?)),
        Command::Backup { file } => runtime.block_on(backup(Config::from_env()?, &file)),
        Command::Migrate { to, force } => {
            runtime.block_on(migrate(Config::from_env()?, &to, force))
        }
        Command::CheckConfig => {
            let config = Config::from_env()?;
            println!("{config:#?}");
            println!(
                "attachments: {}",
                match &config.attachments_s3 {
                    Some(s3) => s3.describe(),
                    None => format!("folder {}", config.attachments_path.display()),
                }
            );
            println!("database backend: {:?}", config.database_target());
            println!("configuration is valid");
            Ok(())
        }
        Command::Keygen => {
            let key = UserKey::generate();
            println!("secret key: {}", key.secret_base64url());
            println!("user id:    {}", key.user_id());
            Ok(())
        }
        Command::Sign {
            key,
            method,
            url,
            tag,
        } => runtime.block_on(sign(&key, &method, &url, tag)),
        Command::Openapi => {
            let pool =
                prost_reflect::DescriptorPool::decode(piqchat_inbox::api::FILE_DESCRIPTOR_SET)?;
            let routes = piqchat_inbox::api::gateway::RouteTable::from_pool(&pool)?;
            let doc =
                piqchat_inbox::api::openapi::document(&routes, &pool, env!("CARGO_PKG_VERSION"));
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
        Command::Healthcheck => healthcheck(&Config::from_env()?),
        Command::MigrateAttachments { to, force } => {
            runtime.block_on(migrate_attachments(&Config::from_env()?, &to, force))
        }
    }
}

/// `GET /healthz` on this machine's listener with plain std I/O: one
/// request, 5 s timeouts, healthy only on `200`.
fn healthcheck(config: &Config) -> anyhow::Result<()> {
    use std::{
        io::{Read as _, Write as _},
        net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
        time::Duration,
    };
    // The admin address always speaks plain HTTP (the API port may be TLS).
    let target = config
        .metrics_address
        .unwrap_or_else(|| SocketAddr::new(config.bind_address, config.port));
    if config.metrics_address.is_none() && config.tls_cert_path.is_some() {
        anyhow::bail!("healthcheck needs METRICS_ADDRESS when built-in TLS is on");
    }
    let ip = match target.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, target.port());
    let timeout = Duration::from_secs(5);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut status = [0u8; 12];
    stream
        .read_exact(&mut status)
        .with_context(|| format!("reading the answer of {addr}"))?;
    if &status[9..] != b"200" {
        anyhow::bail!("{addr} answered {}", String::from_utf8_lossy(&status));
    }
    println!("ok");
    Ok(())
}

async fn sign(key: &str, method: &str, url: &str, tag: Option<String>) -> anyhow::Result<()> {
    let key = UserKey::from_base64url(key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let method: http::Method = method
        .to_ascii_uppercase()
        .parse()
        .map_err(|_| anyhow::anyhow!("--method: not an HTTP method"))?;
    let uri: http::Uri = url.parse().context("--url: not a URL")?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        anyhow::bail!("--url: expected an absolute URL like http://localhost:8080/v1/account");
    };
    let tag = match tag {
        Some(tag) => tag,
        None => {
            let base = format!("{scheme}://{authority}");
            let reply = HttpClient::new(&base, None)
                .json(http::Method::GET, "/v1/info", None)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("fetching {base}/v1/info for the tag: {}", e.message())
                })?;
            reply.json()["serverPublicKey"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{base}/v1/info has no serverPublicKey; pass --tag"))?
        }
    };
    let (input, signature) = RequestSigner::new(key, tag)
        .sign(&method, &uri, &http::HeaderMap::new())
        .map_err(|e| anyhow::anyhow!("signing: {e}"))?;
    println!("Signature-Input: {input}");
    println!("Signature: {signature}");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.push_vapid_contact.is_none() {
        tracing::warn!("PUSH_VAPID_CONTACT is not set: Web Push notifications are disabled");
    }
    let tls = config.tls_cert_path.is_some();
    let app = App::build(config, Clock::system()).await?;
    // SIGHUP reloads TLS certificates; without TLS it must not kill the
    // server (its default action), so it is taken and logged.
    #[cfg(unix)]
    if !tls
        && let Ok(mut hangup) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received: nothing to reload (no built-in TLS)");
            }
        });
    }
    if let Some(link) = app.sign_up_invite() {
        print_invite(link);
    }
    tracing::info!(addr = %app.local_addr(), "piqchat inbox server listening");
    app.run(shutdown_signal()).await
}

async fn invite(config: Config) -> anyhow::Result<()> {
    let clock = Clock::system();
    let state = AppState::open(config, clock.clone()).await?;
    let link = exchanges::create_sign_up_invite(&state.store, &state.config, clock.now()).await?;
    print_invite(&link);
    state.store.close().await;
    Ok(())
}

async fn backup(config: Config, file: &std::path::Path) -> anyhow::Result<()> {
    if config.database_url.is_some() {
        // Nothing to open: the server's backup copies a SQLite file.
        anyhow::bail!("{}", piqchat_inbox::store::PG_BACKUP);
    }
    if file.exists() {
        anyhow::bail!("{} exists already; choose a new file name", file.display());
    }
    let state = AppState::open(config, Clock::system()).await?;
    state
        .store
        .backup_to(file)
        .await
        .with_context(|| format!("writing the backup to {}", file.display()))?;
    state.store.close().await;
    println!("backup written to {}", file.display());
    Ok(())
}

async fn migrate_attachments(config: &Config, to: &str, force: bool) -> anyhow::Result<()> {
    let folder = &config.attachments_path;
    if !folder.is_dir() {
        anyhow::bail!(
            "the attachments folder {} does not exist (PARCEL_ATTACHMENTS_UPLOAD_PATH)",
            folder.display()
        );
    }
    let target = S3Settings::parse(to, &|var| {
        std::env::var(var)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
    .map_err(|(var, message)| {
        let var = if var == "ATTACHMENT_STORE_URL" {
            "--to"
        } else {
            var
        };
        anyhow::anyhow!("{var}: {message}")
    })?;
    let from = Blobs::open(folder)?;
    let to = Blobs::from_config(&Config {
        attachments_s3: Some(target.clone()),
        ..config.clone()
    })?;
    to.ping()
        .await
        .with_context(|| format!("reaching {}", target.describe()))?;
    println!("copying {} to {}", from.describe(), to.describe());
    let report = blobs::copy_all(&from, &to, force).await?;
    println!(
        "copied {} attachments ({} bytes), skipped {} already there, {} deleted meanwhile; every size checked",
        report.copied, report.copied_bytes, report.skipped, report.vanished
    );
    println!("now set ATTACHMENT_STORE_URL={}", target.url());
    Ok(())
}

async fn migrate(config: Config, to: &str, force: bool) -> anyhow::Result<()> {
    if config.database_url.is_some() {
        anyhow::bail!(
            "migrate copies the SQLite database at DATABASE_PATH; unset DATABASE_URL for it"
        );
    }
    let target =
        piqchat_inbox::store::PgTarget::parse(to).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let counts =
        piqchat_inbox::store::copy_sqlite_to_postgres(&config.database_path, &target, force)
            .await
            .with_context(|| format!("copying {} to {target:?}", config.database_path.display()))?;
    for c in &counts {
        println!("{:<20} {:>10} rows", c.table, c.target);
    }
    println!("copied to {target:?}; every table's row count matches");
    Ok(())
}

/// The invite link on standard output, alone on its line so it is easy to copy.
/// A closed standard output (e.g. a supervisor that stopped reading) must not
/// stop the server, so write errors are ignored.
fn print_invite(link: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\nSign-up invite (open it in the browser, then type this server's domain):\n\n{link}\n"
    );
    let _ = out.flush();
}

/// `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON
/// object per line for log collectors, anything else the human format.
fn init_logging() -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Logs go to standard error; standard output carries what the commands
    // print (the invite link, headers), so it stays easy to copy and pipe.
    // A background thread does the writing, so a request never waits on a
    // write system call for its log line (nor are lines dropped: when the
    // buffer is full, logging waits).
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        // The default 128,000-line queue costs megabytes of resident memory
        // up front; a few thousand lines absorb any burst the writer lags.
        .buffered_lines_limit(4096)
        .finish(std::io::stderr());
    // Colour only for a person at a terminal, and never against NO_COLOR
    // (https://no-color.org): escapes in a file or a log collector are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(writer);
    match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => builder.json().flatten_event(true).init(),
        None | Some("" | "text" | "human") => builder.init(),
        Some(other) => anyhow::bail!("LOG_FORMAT: expected json or text, got {other:?}"),
    }
    Ok(guard)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
