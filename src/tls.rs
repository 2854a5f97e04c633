//! Optional built-in TLS (rustls): HTTP/2 and HTTP/1.1 by ALPN, so gRPC and
//! gRPC-web both work over it. The certificate and key are read from PEM
//! files and read again on SIGHUP or when the files change, without dropping
//! connections; a file that fails to load keeps the previous certificate.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use rustls::{
    ServerConfig,
    crypto::ring::sign::any_supported_type,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::sync::watch;

/// Serves the most recently loaded certificate.
#[derive(Debug)]
pub struct CertResolver {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    loaded_mtimes: RwLock<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .expect("certificate lock poisoned")
                .clone(),
        )
    }
}

fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<CertifiedKey> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("TLS_CERT_PATH: reading {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "TLS_CERT_PATH: {} is not a PEM certificate chain",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "TLS_CERT_PATH: {} holds no certificate",
            cert_path.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_path).with_context(|| {
        format!(
            "TLS_KEY_PATH: {} is not a PEM private key",
            key_path.display()
        )
    })?;
    let key = any_supported_type(&key).context("TLS_KEY_PATH: unsupported private key type")?;
    let certified = CertifiedKey::new(certs, key);
    certified
        .keys_match()
        .context("TLS_KEY_PATH: the key does not belong to the certificate")?;
    Ok(certified)
}

fn mtimes(cert_path: &Path, key_path: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert_path), mtime(key_path))
}

impl CertResolver {
    /// Loads the files; fails (naming the variable) when they are unusable.
    pub fn open(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<Self>> {
        let loaded_mtimes = mtimes(cert_path, key_path);
        let key = load(cert_path, key_path)?;
        Ok(Arc::new(CertResolver {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: RwLock::new(Arc::new(key)),
            loaded_mtimes: RwLock::new(loaded_mtimes),
        }))
    }

    /// Loads the files again; on failure the previous certificate stays.
    pub fn reload(&self) {
        let now = mtimes(&self.cert_path, &self.key_path);
        match load(&self.cert_path, &self.key_path) {
            Ok(key) => {
                *self.current.write().expect("certificate lock poisoned") = Arc::new(key);
                *self.loaded_mtimes.write().expect("mtime lock poisoned") = now;
                tracing::info!("TLS certificate reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the previous one")
            }
        }
    }

    fn changed(&self) -> bool {
        mtimes(&self.cert_path, &self.key_path)
            != *self.loaded_mtimes.read().expect("mtime lock poisoned")
    }

    /// Reloads on SIGHUP and when the files' modification times change
    /// (checked every `poll`), until `shutdown` turns true.
    pub async fn watch(self: Arc<Self>, poll: Duration, mut shutdown: watch::Receiver<bool>) {
        #[cfg(unix)]
        let mut hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<()>();
            tokio::select! {
                () = hup => self.reload(),
                () = tokio::time::sleep(poll) => {
                    if self.changed() {
                        self.reload();
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// A rustls server configuration offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(resolver: Arc<CertResolver>) -> anyhow::Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("configuring TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
