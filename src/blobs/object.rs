//! Attachments as objects in an S3-compatible bucket (`ATTACHMENT_STORE_URL
//! =s3://bucket/prefix`), through the `object_store` crate.
//!
//! An object is `<prefix>/<attachment id>`. A PUT is atomic on S3, so a key
//! is either absent or complete, as a renamed file is. Large bodies go up as
//! a multipart upload whose parts are invisible until it completes; one
//! abandoned by a crash is removed by the bucket's lifecycle rule (the
//! client cannot list incomplete uploads).

use std::{collections::HashMap, fmt, io, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::{
    ClientOptions, ObjectMeta, ObjectStore, ObjectStoreExt as _, PutPayload, RetryConfig,
    aws::{AmazonS3, AmazonS3Builder},
    path::Path as ObjectPath,
};

use super::BlobReader;
use crate::{clock::Millis, domain::AttachmentId};

/// Bodies above this go up in parts of this size (S3 wants at least 5 MiB
/// per part but the last).
const PART_BYTES: usize = 8 << 20;
/// How long [`ObjectBlobs::ping`] waits.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the bucket is and how to reach it, from `ATTACHMENT_STORE_URL` and
/// the standard `AWS_*` variables.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Settings {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
    pub region: String,
    /// `AWS_ENDPOINT_URL`: an S3-compatible service (MinIO, Garage, …);
    /// `None` is AWS itself.
    pub endpoint: Option<String>,
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`: bucket in the host name rather
    /// than the path.
    pub virtual_hosted_style: bool,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

/// A bad value, as (variable, what to fix).
pub type SettingError = (&'static str, String);

impl S3Settings {
    /// Parses `s3://bucket/optional/prefix` and reads the `AWS_*` variables
    /// through `get` (trimmed, empty is unset).
    pub fn parse(url: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<Self, SettingError> {
        const VAR: &str = "ATTACHMENT_STORE_URL";
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            (
                VAR,
                format!("expected s3://bucket/optional/prefix, got {url:?}"),
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket).map_err(|m| (VAR, m))?;
        let prefix = prefix.trim_end_matches('/');
        check_prefix(prefix).map_err(|m| (VAR, m))?;

        let endpoint = get("AWS_ENDPOINT_URL_S3")
            .map(|v| ("AWS_ENDPOINT_URL_S3", v))
            .or_else(|| get("AWS_ENDPOINT_URL").map(|v| ("AWS_ENDPOINT_URL", v)))
            .map(|(var, v)| check_endpoint(&v).map_err(|m| (var, m)))
            .transpose()?;
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        if !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err((
                "AWS_REGION",
                format!("expected a region name like eu-central-1, got {region:?}"),
            ));
        }
        // AWS itself takes the bucket in the host name; the S3-compatible
        // servers people run themselves (MinIO, Garage) want it in the path.
        let virtual_hosted_style = match get("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None => endpoint.is_none(),
            Some("1" | "true" | "yes" | "on") => true,
            Some("0" | "false" | "no" | "off") => false,
            Some(other) => {
                return Err((
                    "AWS_VIRTUAL_HOSTED_STYLE_REQUEST",
                    format!("expected true or false, got {other:?}"),
                ));
            }
        };
        let access_key_id = get("AWS_ACCESS_KEY_ID");
        let secret_access_key = get("AWS_SECRET_ACCESS_KEY");
        let session_token = get("AWS_SESSION_TOKEN");
        match (&access_key_id, &secret_access_key) {
            (Some(_), None) => {
                return Err((
                    "AWS_SECRET_ACCESS_KEY",
                    "required when AWS_ACCESS_KEY_ID is set".into(),
                ));
            }
            (None, Some(_)) => {
                return Err((
                    "AWS_ACCESS_KEY_ID",
                    "required when AWS_SECRET_ACCESS_KEY is set".into(),
                ));
            }
            (None, None) if session_token.is_some() => {
                return Err((
                    "AWS_SESSION_TOKEN",
                    "only works with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                ));
            }
            _ => {}
        }
        Ok(S3Settings {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region,
            endpoint,
            virtual_hosted_style,
            access_key_id,
            secret_access_key,
            session_token,
        })
    }

    /// Bucket, prefix, region and endpoint (never credentials).
    pub fn describe(&self) -> String {
        format!(
            "bucket {} (prefix {:?}, region {}, endpoint {}, {} style)",
            self.bucket,
            self.prefix,
            self.region,
            self.endpoint.as_deref().unwrap_or("AWS S3"),
            if self.virtual_hosted_style {
                "virtual-hosted"
            } else {
                "path"
            }
        )
    }

    /// `s3://bucket/prefix`.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The same bucket and credentials under another prefix.
    pub fn with_prefix(&self, prefix: &str) -> Result<Self, String> {
        let prefix = prefix.trim_matches('/');
        check_prefix(prefix)?;
        Ok(S3Settings {
            prefix: prefix.to_owned(),
            ..self.clone()
        })
    }
}

// By hand: the secret and the session token never reach a log or
// `check-config`.
impl fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint.as_deref().unwrap_or("(AWS S3)"))
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field(
                "credentials",
                &match (&self.access_key_id, &self.session_token) {
                    (None, _) => "instance metadata (no AWS_ACCESS_KEY_ID)",
                    (Some(_), None) => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    (Some(_), Some(_)) => {
                        "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN"
                    }
                },
            )
            .finish()
    }
}

/// S3's bucket naming rules, so a typo fails at start rather than as a
/// puzzling 400 from the service.
fn check_bucket(bucket: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{bucket:?} is not a bucket name: 3 to 63 lowercase letters, digits, '.' or '-', starting and ending with a letter or digit"
        ))
    }
}

/// Prefix segments of plain characters only, so every key is the same on
/// every S3 implementation and needs no escaping.
fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    for segment in prefix.split('/') {
        let plain = !segment.is_empty()
            && segment != "."
            && segment != ".."
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !plain {
            return Err(format!(
                "the key prefix {prefix:?} may only hold letters, digits, '-', '_' and '.' between single '/'s"
            ));
        }
    }
    Ok(())
}

fn check_endpoint(endpoint: &str) -> Result<String, String> {
    let endpoint = endpoint.trim_end_matches('/');
    let host = endpoint
        .strip_prefix("https://")
        .or_else(|| endpoint.strip_prefix("http://"));
    match host {
        Some(host)
            if !host.is_empty()
                && !host.contains(['/', '?', '#', '@'])
                && host.is_ascii()
                && !host.contains(char::is_whitespace) =>
        {
            Ok(endpoint.to_owned())
        }
        _ => Err(format!(
            "expected the service's base URL like https://s3.example.org or http://minio:9000 (no path), got {endpoint:?}"
        )),
    }
}

#[derive(Clone)]
pub struct ObjectBlobs {
    store: Arc<AmazonS3>,
    prefix: ObjectPath,
    settings: Arc<S3Settings>,
}

impl fmt::Debug for ObjectBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectBlobs")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ObjectBlobs {
    /// Builds the client; no request is made (see [`ObjectBlobs::ping`]).
    pub fn open(settings: &S3Settings) -> io::Result<Self> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_virtual_hosted_style_request(settings.virtual_hosted_style)
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    // A download streams at the client's pace: a 20 MiB
                    // attachment to a slow phone may take minutes.
                    .with_timeout(Duration::from_secs(600))
                    .with_allow_http(
                        settings
                            .endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            )
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = &settings.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder.build().map_err(io_error)?;
        let prefix = ObjectPath::from(settings.prefix.as_str());
        Ok(ObjectBlobs {
            store: Arc::new(store),
            prefix,
            settings: Arc::new(settings.clone()),
        })
    }

    fn key(&self, id: &AttachmentId) -> ObjectPath {
        self.prefix.clone().join(id.to_string())
    }

    pub fn settings(&self) -> &S3Settings {
        &self.settings
    }

    /// Every attachment object directly under the prefix with its size.
    pub async fn sizes(&self) -> io::Result<HashMap<AttachmentId, u64>> {
        Ok(self
            .listing()
            .await?
            .into_iter()
            .map(|(id, meta)| (id, meta.size))
            .collect())
    }

    pub async fn write(&self, id: &AttachmentId, data: Vec<u8>) -> io::Result<()> {
        let key = self.key(id);
        let data = Bytes::from(data);
        if data.len() <= PART_BYTES {
            self.store
                .put(&key, PutPayload::from(data))
                .await
                .map_err(io_error)?;
            return Ok(());
        }
        let mut upload = self.store.put_multipart(&key).await.map_err(io_error)?;
        let parts: Vec<_> = (0..data.len())
            .step_by(PART_BYTES)
            .map(|at| {
                let part = data.slice(at..(at + PART_BYTES).min(data.len()));
                upload.put_part(PutPayload::from(part))
            })
            .collect();
        let result = async {
            futures_util::future::try_join_all(parts).await?;
            upload.complete().await
        }
        .await;
        if let Err(e) = result {
            // Parts of an aborted upload are freed at once; a failed abort
            // is left to the lifecycle rule.
            if let Err(abort) = upload.abort().await {
                tracing::warn!(error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(io_error(e));
        }
        Ok(())
    }

    pub async fn open_read(&self, id: &AttachmentId) -> io::Result<BlobReader> {
        let got = self.store.get(&self.key(id)).await.map_err(io_error)?;
        let stream = got.into_stream().map_err(io_error);
        Ok(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }

    /// A HEAD first: S3 answers a DELETE alike whether or not the key was
    /// there, and the callers count what went.
    pub async fn remove(&self, id: &AttachmentId) -> io::Result<bool> {
        if !self.exists(id).await? {
            return Ok(false);
        }
        match self.store.delete(&self.key(id)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(io_error(e)),
        }
    }

    pub async fn exists(&self, id: &AttachmentId) -> io::Result<bool> {
        match self.store.head(&self.key(id)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    pub async fn files(&self) -> io::Result<Vec<(AttachmentId, Millis)>> {
        Ok(self
            .listing()
            .await?
            .into_iter()
            .map(|(id, meta)| (id, meta.last_modified.timestamp_millis()))
            .collect())
    }

    /// Every object directly under the prefix whose name is an attachment
    /// id; deeper keys and foreign names are left alone.
    async fn listing(&self) -> io::Result<Vec<(AttachmentId, ObjectMeta)>> {
        let depth = self.prefix.parts().count() + 1;
        let mut listing = self.store.list(Some(&self.prefix));
        let mut found = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(io_error)?;
            if meta.location.parts().count() != depth {
                continue;
            }
            if let Some(id) = meta
                .location
                .filename()
                .and_then(|n| AttachmentId::parse(n).ok())
            {
                found.push((id, meta));
            }
        }
        Ok(found)
    }

    /// One listing request that starts after every attachment id ('z'
    /// sorts after hex digits and '-'), so the answer is empty and small; it
    /// fails when the bucket is missing or the credentials are refused,
    /// which a HEAD of a missing key would not tell apart.
    pub async fn ping(&self) -> io::Result<()> {
        let after = self.prefix.clone().join("zz");
        let mut listing = self.store.list_with_offset(Some(&self.prefix), &after);
        match tokio::time::timeout(PING_TIMEOUT, listing.next()).await {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the object store did not answer in time",
            )),
            Ok(None | Some(Ok(_))) => Ok(()),
            Ok(Some(Err(e))) => Err(io_error(e)),
        }
    }
}

/// Object store errors as I/O errors, keeping "not found" recognisable.
fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        e => io::Error::other(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn a_url_names_bucket_and_prefix() {
        let s = S3Settings::parse("s3://inbox-data/prod/attachments/", &env(&[])).unwrap();
        assert_eq!(s.bucket, "inbox-data");
        assert_eq!(s.prefix, "prod/attachments");
        assert_eq!(s.region, "us-east-1");
        assert!(s.virtual_hosted_style, "AWS itself: virtual-hosted");
        assert_eq!(s.url(), "s3://inbox-data/prod/attachments");
        let s = S3Settings::parse("s3://inbox-data", &env(&[])).unwrap();
        assert_eq!(s.prefix, "");
    }

    #[test]
    fn an_endpoint_means_path_style_and_http_only_when_it_says_so() {
        let s = S3Settings::parse(
            "s3://b12/p",
            &env(&[
                ("AWS_ENDPOINT_URL", "http://minio:9000/"),
                ("AWS_REGION", "garage"),
            ]),
        )
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://minio:9000"));
        assert!(!s.virtual_hosted_style);
        assert_eq!(s.region, "garage");
        let s = S3Settings::parse(
            "s3://b12",
            &env(&[
                ("AWS_ENDPOINT_URL", "https://s3.example.org"),
                ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "true"),
            ]),
        )
        .unwrap();
        assert!(s.virtual_hosted_style);
    }

    #[test]
    fn bad_values_name_the_variable_to_fix() {
        let var =
            |url: &str, vars: &[(&str, &str)]| S3Settings::parse(url, &env(vars)).unwrap_err().0;
        assert_eq!(var("gs://bucket", &[]), "ATTACHMENT_STORE_URL");
        assert_eq!(var("s3://Bucket_Upper", &[]), "ATTACHMENT_STORE_URL");
        assert_eq!(var("s3://ok-bucket/../up", &[]), "ATTACHMENT_STORE_URL");
        assert_eq!(var("s3://ok-bucket/a//b", &[]), "ATTACHMENT_STORE_URL");
        assert_eq!(var("s3://ok-bucket/a b", &[]), "ATTACHMENT_STORE_URL");
        assert_eq!(
            var("s3://ok-bucket", &[("AWS_ENDPOINT_URL", "minio:9000")]),
            "AWS_ENDPOINT_URL"
        );
        assert_eq!(
            var("s3://ok-bucket", &[("AWS_ENDPOINT_URL", "http://h/path")]),
            "AWS_ENDPOINT_URL"
        );
        assert_eq!(
            var("s3://ok-bucket", &[("AWS_ACCESS_KEY_ID", "AKIA")]),
            "AWS_SECRET_ACCESS_KEY"
        );
        assert_eq!(
            var("s3://ok-bucket", &[("AWS_SESSION_TOKEN", "t")]),
            "AWS_SESSION_TOKEN"
        );
        assert_eq!(
            var(
                "s3://ok-bucket",
                &[("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "maybe")]
            ),
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"
        );
        assert_eq!(
            var("s3://ok-bucket", &[("AWS_REGION", "eu central")]),
            "AWS_REGION"
        );
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let s = S3Settings::parse(
            "s3://ok-bucket",
            &env(&[
                ("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID"),
                ("AWS_SECRET_ACCESS_KEY", "very-secret-value"),
                ("AWS_SESSION_TOKEN", "session-token-value"),
            ]),
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("ok-bucket"), "{shown}");
        for secret in [
            "AKIAEXAMPLEKEYID",
            "very-secret-value",
            "session-token-value",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
