//! The `piqchat-inbox` command: `serve` (the default) and operator commands.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use piqchat_inbox::{
    app::{App, AppState},
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
    Backup {
        /// The file to create; it must not exist yet.
        file: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(e) if e.not_found() => {}
        Err(e) => return Err(e).context("reading .env"),
    }
    init_logging()?;
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Runtime::new()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime.block_on(serve(config)),
        Command::Invite => runtime.block_on(invite(config)),
        Command::Backup { file } => runtime.block_on(backup(config, &file)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if config.push_vapid_contact.is_none() {
        tracing::warn!("PUSH_VAPID_CONTACT is not set: Web Push notifications are disabled");
    }
    let app = App::build(config, Clock::system()).await?;
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

/// The invite link on standard output, alone on its line so it is easy to copy.
fn print_invite(link: &str) {
    println!();
    println!("Sign-up invite (open it in the browser, then type this server's domain):");
    println!();
    println!("{link}");
    println!();
}

/// `RUST_LOG` filters (default `info`); `LOG_FORMAT=json` writes one JSON
/// object per line for log collectors, anything else the human format.
fn init_logging() -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => builder.json().flatten_event(true).init(),
        None | Some("" | "text" | "human") => builder.init(),
        Some(other) => anyhow::bail!("LOG_FORMAT: expected json or text, got {other:?}"),
    }
    Ok(())
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
