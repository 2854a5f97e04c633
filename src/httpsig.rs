//! RFC 9421 HTTP Message Signatures (algorithm `ed25519` only) and RFC 9530
//! `Content-Digest` helpers.
//!
//! Pure code: no I/O, no clock. Policy (required components and parameters,
//! time window, nonce replay, which label to verify) belongs to the caller and
//! is described in `docs/AUTH.md`.
#![forbid(unsafe_code)]

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sfv::{
    BareItem, Dictionary, FieldType as _, InnerList, Item, ListEntry, Parameters, Parser, Version,
};
use sha2::{Digest as _, Sha256, Sha512};

/// The label piqchat clients sign under and the server verifies when a
/// request carries several signatures (`docs/AUTH.md`).
pub const PREFERRED_LABEL: &str = "piqchat";

/// Why a signature or digest was rejected. `Display` is meant for the client
/// (the server returns it as the 401 reason): short, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    #[error("malformed {field} header: {reason}")]
    Malformed { field: &'static str, reason: String },
    #[error("signature label `{0}` must appear in both signature-input and signature")]
    LabelMismatch(String),
    #[error("signature-input `{0}` must be an inner list")]
    NotInnerList(String),
    #[error("signature `{0}` must be a byte sequence")]
    NotByteSequence(String),
    #[error("covered component {0}: {1}")]
    Component(String, &'static str),
    #[error("covered component {0} is listed twice")]
    DuplicateComponent(String),
    #[error("signature parameter `{0}` has the wrong type")]
    ParamType(&'static str),
    #[error("unknown signature parameter `{0}`")]
    UnknownParam(String),
    #[error("covered header `{0}` is missing")]
    MissingHeader(String),
    #[error("covered header `{0}` is not a valid structured field")]
    BadStructuredHeader(String),
    #[error("key `{key}` is missing from covered header `{field}`")]
    MissingKey { field: String, key: String },
    #[error("query parameter `{0}` is missing")]
    MissingQueryParam(String),
    #[error("query parameter `{0}` occurs more than once; cover \"@query\" instead")]
    RepeatedQueryParam(String),
    #[error("value of covered component {0} is empty or not printable ascii")]
    BadValue(String),
    #[error("cannot sign: {0}")]
    BadInput(&'static str),
    #[error("signature must be 64 bytes")]
    SignatureLength,
    #[error("keyid is not a valid ed25519 public key")]
    BadPublicKey,
    #[error("signature does not verify")]
    VerifyFailed,
    #[error("content-digest: {0}")]
    ContentDigest(&'static str),
}

/// What the verifier knows about the request as received.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    /// e.g. `POST`; used as is (RFC 9421 §2.2.1: case-sensitive).
    pub method: &'a str,
    /// HTTP/2 `:authority` or HTTP/1.1 `Host`, as received; normalised here.
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Raw path as received; `""` means `/`.
    pub path: &'a str,
    /// Raw query without `?`; `None` when the target has no `?`.
    pub query: Option<&'a str>,
    pub headers: &'a http::HeaderMap,
}

/// One covered component identifier: an sf-string name plus its parameters,
/// kept as the parsed item so it re-serialises exactly as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentId {
    name: String,
    item: Item,
}

/// Metadata of one signature (RFC 9421 §2.3) and its covered components.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SignatureParams {
    pub components: Vec<ComponentId>,
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub tag: Option<String>,
}

/// A signature found in the `Signature-Input`/`Signature` headers.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedSignature {
    pub label: String,
    pub params: SignatureParams,
    pub signature: Vec<u8>,
    /// Canonical serialisation of the received inner list (`@signature-params`).
    params_line: String,
}

/// Digest algorithms understood in `Content-Digest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha512,
}

/// Fields whose `sf` serialisation we know how to do (all dictionaries).
const SF_DICTIONARIES: &[&str] = &[
    "content-digest",
    "repr-digest",
    "signature",
    "signature-input",
];

/// More covered components than any sane client sends.
const MAX_COMPONENTS: usize = 64;

fn short(s: &str) -> String {
    // Client-controlled text ends up in error messages: keep it bounded.
    s.chars().take(64).collect()
}

fn sf_parser(s: &str) -> Parser<'_> {
    // RFC 9421 is defined over RFC 8941 (no dates, no display strings).
    Parser::new(s).with_version(Version::Rfc8941)
}

/// Serialises one dictionary/list member (an item or an inner list).
fn ser_entry(entry: &ListEntry) -> String {
    let mut ser = sfv::ListSerializer::new();
    ser.members(std::iter::once(entry));
    ser.finish().unwrap_or_default()
}

impl ComponentId {
    /// Parses `@method`, `content-digest` or a full identifier such as
    /// `"@query-param";name="a"` / `"content-digest";sf`.
    pub fn parse(s: &str) -> Result<Self, SigError> {
        let bad = |_| SigError::Component(short(s), "not a valid component identifier");
        let item = if s.starts_with('"') {
            sf_parser(s).parse_item().map_err(bad)?
        } else {
            Item::new(sfv::String::from_string(s.to_owned()).map_err(|(e, _)| bad(e))?)
        };
        Self::from_item(item)
    }

    /// Validates a received identifier (RFC 9421 §2.1, §2.2).
    fn from_item(item: Item) -> Result<Self, SigError> {
        let Some(name) = item.bare_item.as_string().map(|s| s.as_str().to_owned()) else {
            return Err(SigError::Component(
                short(&item.serialize()),
                "must be a quoted string",
            ));
        };
        let err = |why| Err(SigError::Component(format!("\"{}\"", short(&name)), why));
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return err("name must be lowercase and non-empty");
        }
        for (key, value) in &item.params {
            match (key.as_str(), value) {
                ("sf", BareItem::Boolean(true)) | ("key" | "name", BareItem::String(_)) => {}
                ("sf" | "key" | "name", _) => return err("component parameter has the wrong type"),
                ("bs" | "req" | "tr", _) => return err("unsupported component parameter"),
                _ => return err("unknown component parameter"),
            }
        }
        let has = |k: &str| item.params.contains_key(k);
        if name.starts_with('@') {
            match name.as_str() {
                "@method" | "@authority" | "@scheme" | "@target-uri" | "@request-target"
                | "@path" | "@query"
                    if item.params.is_empty() => {}
                "@query-param" if has("name") && item.params.len() == 1 => {}
                "@method" | "@authority" | "@scheme" | "@target-uri" | "@request-target"
                | "@path" | "@query" | "@query-param" => {
                    return err("wrong component parameters");
                }
                "@status" => return err("only valid in responses"),
                "@signature-params" => return err("must not be covered"),
                _ => return err("unknown derived component"),
            }
        } else {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return err("not a valid header name");
            }
            if has("name") {
                return err("`name` is only for \"@query-param\"");
            }
            if has("sf") && !has("key") && !SF_DICTIONARIES.contains(&name.as_str()) {
                return err("structured serialisation (sf) is not supported for this field");
            }
        }
        Ok(Self { name, item })
    }

    /// The lowercase component name, e.g. `@method` or `content-digest`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A string parameter (`name` or `key`), if present.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.item.params.get(key)?.as_string().map(|s| s.as_str())
    }

    /// True for a bare name without parameters (what the policy checks).
    pub fn is_plain(&self, name: &str) -> bool {
        self.name == name && self.item.params.is_empty()
    }

    /// The identifier as it appears in the signature base, e.g. `"@path"`.
    pub fn serialize(&self) -> String {
        self.item.serialize()
    }
}

impl SignatureParams {
    /// True when `name` is covered without component parameters.
    pub fn covers(&self, name: &str) -> bool {
        self.components.iter().any(|c| c.is_plain(name))
    }

    fn from_inner_list(inner: &InnerList) -> Result<Self, SigError> {
        // Bounds the quadratic duplicate check below.
        if inner.items.len() > MAX_COMPONENTS {
            return Err(SigError::Malformed {
                field: "signature-input",
                reason: format!("more than {MAX_COMPONENTS} covered components"),
            });
        }
        let mut p = Self::default();
        for item in &inner.items {
            let c = ComponentId::from_item(item.clone())?;
            if p.components.iter().any(|o| o.item == c.item) {
                return Err(SigError::DuplicateComponent(short(&c.serialize())));
            }
            p.components.push(c);
        }
        for (key, v) in &inner.params {
            let int = |n| v.as_integer().map(i64::from).ok_or(SigError::ParamType(n));
            let string = |n| {
                let s = v.as_string().ok_or(SigError::ParamType(n))?;
                Ok::<_, SigError>(Some(s.as_str().to_owned()))
            };
            match key.as_str() {
                "created" => p.created = Some(int("created")?),
                "expires" => p.expires = Some(int("expires")?),
                "nonce" => p.nonce = string("nonce")?,
                "alg" => p.alg = string("alg")?,
                "keyid" => p.keyid = string("keyid")?,
                "tag" => p.tag = string("tag")?,
                other => return Err(SigError::UnknownParam(short(other))),
            }
        }
        Ok(p)
    }

    /// Inner list for signing; parameters in a fixed order:
    /// created, expires, nonce, alg, keyid, tag (only those set).
    fn to_inner_list(&self) -> Result<InnerList, SigError> {
        let mut items = Vec::with_capacity(self.components.len());
        for (i, c) in self.components.iter().enumerate() {
            if self.components[..i].iter().any(|o| o.item == c.item) {
                return Err(SigError::DuplicateComponent(short(&c.serialize())));
            }
            items.push(c.item.clone());
        }
        let mut params = Parameters::new();
        for (k, v) in [("created", self.created), ("expires", self.expires)] {
            if let Some(v) = v {
                let v = sfv::Integer::try_from(v)
                    .map_err(|_| SigError::BadInput("created/expires out of range"))?;
                params.insert(sfv::key_ref(k).to_owned(), BareItem::Integer(v));
            }
        }
        let strings = [
            ("nonce", &self.nonce),
            ("alg", &self.alg),
            ("keyid", &self.keyid),
            ("tag", &self.tag),
        ];
        for (k, v) in strings {
            if let Some(v) = v {
                let v = sfv::String::from_string(v.clone())
                    .map_err(|_| SigError::BadInput("parameters must be printable ascii"))?;
                params.insert(sfv::key_ref(k).to_owned(), BareItem::String(v));
            }
        }
        Ok(InnerList::with_params(items, params))
    }
}

impl ParsedSignature {
    /// The `@signature-params` value: the received inner list, re-serialised.
    pub fn signature_params_line(&self) -> &str {
        &self.params_line
    }
}

/// Joins all lines of a dictionary header (RFC 9110 §5.3) and parses it.
fn header_dict(headers: &http::HeaderMap, field: &'static str) -> Result<Dictionary, SigError> {
    let mut dict = Dictionary::new();
    for value in headers.get_all(field) {
        let malformed = |reason: String| SigError::Malformed { field, reason };
        let s = value
            .to_str()
            .map_err(|_| malformed("not printable ascii".into()))?;
        dict = sf_parser(s)
            .parse_dictionary_with_visitor(dict)
            .map_err(|e| malformed(e.to_string()))?;
    }
    Ok(dict)
}

/// Parses every signature in `Signature-Input` + `Signature`, in
/// `Signature-Input` order. No headers at all gives an empty list.
pub fn parse(headers: &http::HeaderMap) -> Result<Vec<ParsedSignature>, SigError> {
    let inputs = header_dict(headers, "signature-input")?;
    let sigs = header_dict(headers, "signature")?;
    if let Some(label) = sigs.keys().find(|k| !inputs.contains_key(k.as_str())) {
        return Err(SigError::LabelMismatch(short(label.as_str())));
    }
    let mut out = Vec::with_capacity(inputs.len());
    for (label, entry) in &inputs {
        let label = label.as_str();
        let ListEntry::InnerList(inner) = entry else {
            return Err(SigError::NotInnerList(short(label)));
        };
        let signature = match sigs.get(label) {
            None => return Err(SigError::LabelMismatch(short(label))),
            Some(ListEntry::Item(Item {
                bare_item: BareItem::ByteSequence(b),
                ..
            })) => b.clone(),
            Some(_) => return Err(SigError::NotByteSequence(short(label))),
        };
        out.push(ParsedSignature {
            label: label.to_owned(),
            params: SignatureParams::from_inner_list(inner)?,
            signature,
            params_line: ser_entry(entry),
        });
    }
    Ok(out)
}

/// The RFC 9421 §2.5 signature base for one signature over this request.
pub fn signature_base(sig: &ParsedSignature, req: &RequestParts) -> Result<String, SigError> {
    build_base(&sig.params.components, &sig.params_line, req)
}

fn build_base(
    components: &[ComponentId],
    params_line: &str,
    req: &RequestParts,
) -> Result<String, SigError> {
    let mut base = String::new();
    for c in components {
        base.push_str(&c.serialize());
        base.push_str(": ");
        base.push_str(&component_value(c, req)?);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_line);
    Ok(base)
}

/// RFC 9110 §4.2.3 normalisation: lowercase, no default port.
fn normalized_authority(req: &RequestParts) -> String {
    let a = req.authority.to_ascii_lowercase();
    let port = match req.scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return a,
    };
    match a.strip_suffix(port) {
        // Only a real port: not the tail of a bracket-less IPv6 literal.
        Some(host) if !host.is_empty() && (host.ends_with(']') || !host.contains(':')) => {
            host.to_owned()
        }
        _ => a,
    }
}

fn component_value(c: &ComponentId, req: &RequestParts) -> Result<String, SigError> {
    let path = if req.path.is_empty() { "/" } else { req.path };
    let query = req.query.map(|q| format!("?{q}")).unwrap_or_default();
    let value = match c.name() {
        "@method" => req.method.to_owned(),
        "@authority" => normalized_authority(req),
        "@scheme" => req.scheme.to_ascii_lowercase(),
        "@target-uri" => format!(
            "{}://{}{path}{query}",
            req.scheme.to_ascii_lowercase(),
            normalized_authority(req)
        ),
        "@request-target" => format!("{path}{query}"),
        "@path" => path.to_owned(),
        "@query" => format!("?{}", req.query.unwrap_or("")),
        "@query-param" => query_param(req.query.unwrap_or(""), c.param("name").unwrap_or(""))?,
        _ => field_value(c, req.headers)?,
    };
    // No CR/LF/controls/non-ASCII may reach the base (line injection).
    let derived_empty = c.name.starts_with('@') && c.name != "@query-param" && value.is_empty();
    if derived_empty
        || value
            .bytes()
            .any(|b| b != b'\t' && !(0x20..0x7f).contains(&b))
    {
        return Err(SigError::BadValue(short(&c.serialize())));
    }
    Ok(value)
}

fn field_value(c: &ComponentId, headers: &http::HeaderMap) -> Result<String, SigError> {
    let name = c.name();
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let v = v
            .to_str()
            .map_err(|_| SigError::BadValue(short(&c.serialize())))?;
        values.push(v.trim_matches([' ', '\t']));
    }
    if values.is_empty() {
        return Err(SigError::MissingHeader(name.to_owned()));
    }
    let joined = values.join(", ");
    let has_sf = c.item.params.contains_key("sf");
    let key = c.param("key");
    if !has_sf && key.is_none() {
        return Ok(joined);
    }
    let bad = || SigError::BadStructuredHeader(name.to_owned());
    let dict: Dictionary = sf_parser(&joined).parse().map_err(|_| bad())?;
    match key {
        Some(k) => dict
            .get(k)
            .map(ser_entry)
            .ok_or_else(|| SigError::MissingKey {
                field: name.to_owned(),
                key: short(k),
            }),
        None => dict.serialize().ok_or_else(bad),
    }
}

/// `application/x-www-form-urlencoded` parsing of one name or value.
fn form_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
            (b'+', ..) => out.push(b' '),
            (x, ..) => out.push(x),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Re-encoding per RFC 9421 §2.2.8: every byte outside the urlencoded safe
/// set becomes `%XX` (space included, as in the RFC's examples).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"*-._".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_param(query: &str, want: &str) -> Result<String, SigError> {
    let mut found = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_encode(&form_decode(name)) == want {
            // RFC 9421 §2.2.8: a repeated name must not be used.
            if found.is_some() {
                return Err(SigError::RepeatedQueryParam(short(want)));
            }
            found = Some(form_encode(&form_decode(value)));
        }
    }
    found.ok_or_else(|| SigError::MissingQueryParam(short(want)))
}

/// Verifies an Ed25519 signature over `base` (strict: no malleable or
/// small-order keys).
pub fn verify_ed25519(base: &str, signature: &[u8], public_key: &[u8; 32]) -> Result<(), SigError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| SigError::BadPublicKey)?;
    let sig = Signature::from_slice(signature).map_err(|_| SigError::SignatureLength)?;
    key.verify_strict(base.as_bytes(), &sig)
        .map_err(|_| SigError::VerifyFailed)
}

/// Signs `req` and returns the `Signature-Input` and `Signature` header values
/// for `label`. Parameters are emitted as created, expires, nonce, alg,
/// keyid, tag (those that are set).
pub fn sign_ed25519(
    label: &str,
    params: &SignatureParams,
    req: &RequestParts,
    secret_key: &[u8; 32],
) -> Result<(String, String), SigError> {
    sfv::KeyRef::from_str(label).map_err(|_| SigError::BadInput("label must be an sf-key"))?;
    let entry = ListEntry::InnerList(params.to_inner_list()?);
    let params_line = ser_entry(&entry);
    let base = build_base(&params.components, &params_line, req)?;
    let sig = SigningKey::from_bytes(secret_key).sign(base.as_bytes());
    Ok((
        format!("{label}={params_line}"),
        format!("{label}=:{}:", STANDARD.encode(sig.to_bytes())),
    ))
}

/// The Ed25519 public key for a 32-byte secret key (seed).
pub fn public_key_from_secret(secret_key: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(secret_key)
        .verifying_key()
        .to_bytes()
}

/// A user id / keyid: unpadded base64url of the public key (43 chars).
pub fn user_id(public_key: &[u8; 32]) -> String {
    URL_SAFE_NO_PAD.encode(public_key)
}

/// Inverse of [`user_id`]; rejects padding and non-canonical encodings.
pub fn public_key_from_user_id(id: &str) -> Result<[u8; 32], SigError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(id)
        .map_err(|_| SigError::BadPublicKey)?;
    bytes.try_into().map_err(|_| SigError::BadPublicKey)
}

/// `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest_sha256(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// The supported digests in a `Content-Digest` value; unknown algorithms are
/// ignored, a value with none we support is an error.
pub fn parse_content_digest(value: &str) -> Result<Vec<(DigestAlg, Vec<u8>)>, SigError> {
    let dict: Dictionary = sf_parser(value)
        .parse()
        .map_err(|_| SigError::ContentDigest("not a valid structured field dictionary"))?;
    let mut out = Vec::new();
    for (key, entry) in &dict {
        let (alg, len) = match key.as_str() {
            "sha-256" => (DigestAlg::Sha256, 32),
            "sha-512" => (DigestAlg::Sha512, 64),
            _ => continue,
        };
        match entry {
            ListEntry::Item(Item {
                bare_item: BareItem::ByteSequence(d),
                ..
            }) if d.len() == len => out.push((alg, d.clone())),
            _ => {
                return Err(SigError::ContentDigest(
                    "digest has the wrong type or length",
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(SigError::ContentDigest("needs a sha-256 or sha-512 digest"));
    }
    Ok(out)
}

/// Checks every supported digest in a `Content-Digest` value against `body`.
pub fn verify_content_digest(value: &str, body: &[u8]) -> Result<(), SigError> {
    for (alg, digest) in parse_content_digest(value)? {
        let actual = match alg {
            DigestAlg::Sha256 => Sha256::digest(body).to_vec(),
            DigestAlg::Sha512 => Sha512::digest(body).to_vec(),
        };
        if actual != digest {
            return Err(SigError::ContentDigest("does not match the body"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        query: Option<&'a str>,
        h: &'a HeaderMap,
    ) -> RequestParts<'a> {
        RequestParts {
            method,
            authority: "example.com",
            scheme: "https",
            path,
            query,
            headers: h,
        }
    }

    fn params(components: &[&str]) -> SignatureParams {
        SignatureParams {
            components: components
                .iter()
                .map(|c| ComponentId::parse(c).unwrap())
                .collect(),
            created: Some(1_700_000_000),
            ..Default::default()
        }
    }

    /// Last 32 bytes of a PEM's DER body: the raw key for Ed25519 PKCS#8/SPKI.
    fn pem_key(pem_body: &str) -> [u8; 32] {
        let der = STANDARD.decode(pem_body).unwrap();
        der[der.len() - 32..].try_into().unwrap()
    }

    // RFC 9421 Appendix B.1.4 (test-key-ed25519), PEM bodies.
    const RFC_PRIV: &str = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF";
    const RFC_PUB: &str = "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=";

    #[test]
    fn rfc9421_b26_ed25519() {
        let sig_input = concat!(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length")"#,
            r#";created=1618884473;keyid="test-key-ed25519""#
        );
        let sig_value = concat!(
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1",
            "u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
        );
        let expected_base = concat!(
            "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
            "\"@method\": POST\n",
            "\"@path\": /foo\n",
            "\"@authority\": example.com\n",
            "\"content-type\": application/json\n",
            "\"content-length\": 18\n",
            r#""@signature-params": ("date" "@method" "@path" "@authority" "content-type" "#,
            r#""content-length");created=1618884473;keyid="test-key-ed25519""#
        );
        // The RFC's test-request (Appendix B.2).
        let digest = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
        let h = headers(&[
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-digest", digest),
            ("content-length", "18"),
            ("signature-input", sig_input),
            ("signature", sig_value),
        ]);
        let r = req("POST", "/foo", Some("param=Value&Pet=dog"), &h);
        verify_content_digest(digest, br#"{"hello": "world"}"#).unwrap();

        let (secret, public) = (pem_key(RFC_PRIV), pem_key(RFC_PUB));
        assert_eq!(public_key_from_secret(&secret), public);

        let sigs = parse(&h).unwrap();
        assert_eq!(sigs.len(), 1);
        let s = &sigs[0];
        assert_eq!(
            (s.label.as_str(), s.params.created),
            ("sig-b26", Some(1_618_884_473))
        );
        assert_eq!(s.params.keyid.as_deref(), Some("test-key-ed25519"));
        let base = signature_base(s, &r).unwrap();
        assert_eq!(base, expected_base);
        verify_ed25519(&base, &s.signature, &public).unwrap();
        // Ed25519 is deterministic: re-signing gives the RFC's bytes.
        let resigned = SigningKey::from_bytes(&secret).sign(base.as_bytes());
        assert_eq!(resigned.to_bytes().as_slice(), s.signature.as_slice());
        // And the signing API reproduces both header values.
        let (si, sv) = sign_ed25519("sig-b26", &s.params, &r, &secret).unwrap();
        assert_eq!((si.as_str(), sv.as_str()), (sig_input, sig_value));
    }

    // The worked example of docs/AUTH.md; the doc is checked verbatim below.
    const EX_SECRET_HEX: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const EX_SERVER_SECRET_HEX: &str =
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const EX_BASE: &str = concat!(
        "\"@method\": GET\n",
        "\"@authority\": inbox.example.org\n",
        "\"@path\": /v1/parcels\n",
        "\"@query\": ?page_size=20\n",
        r#""@signature-params": ("@method" "@authority" "@path" "@query");created=1767225600"#,
        r#";nonce="oKGio6SlpqeoqaqrrK2urw";alg="ed25519""#,
        r#";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#,
        r#";tag="PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw""#
    );
    const EX_SIGNATURE_INPUT: &str = concat!(
        r#"piqchat=("@method" "@authority" "@path" "@query");created=1767225600"#,
        r#";nonce="oKGio6SlpqeoqaqrrK2urw";alg="ed25519""#,
        r#";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo""#,
        r#";tag="PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw""#
    );
    const EX_SIGNATURE: &str = concat!(
        "piqchat=:iONON9Bn76A0adEJ9SSX02Tu07V2siuA+w8GXez9vr3o4uoFQB1K5rMzew+4",
        "pW3FanAjBC162hlf77ZKb07BCQ==:"
    );

    fn unhex(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn auth_md_worked_example() {
        let secret = unhex(EX_SECRET_HEX);
        let uid = user_id(&public_key_from_secret(&secret));
        let tag = user_id(&public_key_from_secret(&unhex(EX_SERVER_SECRET_HEX)));
        let h = HeaderMap::new();
        let r = RequestParts {
            method: "GET",
            authority: "inbox.example.org",
            scheme: "https",
            path: "/v1/parcels",
            query: Some("page_size=20"),
            headers: &h,
        };
        let p = SignatureParams {
            created: Some(1_767_225_600),
            nonce: Some("oKGio6SlpqeoqaqrrK2urw".into()),
            alg: Some("ed25519".into()),
            keyid: Some(uid.clone()),
            tag: Some(tag.clone()),
            ..params(&["@method", "@authority", "@path", "@query"])
        };
        let (si, sv) = sign_ed25519("piqchat", &p, &r, &secret).unwrap();
        let mut signed = HeaderMap::new();
        signed.insert("signature-input", si.parse().unwrap());
        signed.insert("signature", sv.parse().unwrap());
        let parsed = parse(&signed).unwrap();
        let base = signature_base(&parsed[0], &r).unwrap();
        verify_ed25519(
            &base,
            &parsed[0].signature,
            &public_key_from_secret(&secret),
        )
        .unwrap();
        assert_eq!(
            (base.as_str(), si.as_str(), sv.as_str()),
            (EX_BASE, EX_SIGNATURE_INPUT, EX_SIGNATURE)
        );
        let doc = include_str!("../docs/AUTH.md");
        for needle in [
            format!("```text\n{EX_BASE}\n```"),
            format!("Signature-Input: {EX_SIGNATURE_INPUT}"),
            format!("Signature: {EX_SIGNATURE}"),
            EX_SECRET_HEX.to_owned(),
            EX_SERVER_SECRET_HEX.to_owned(),
            hex(&public_key_from_secret(&secret)),
            hex(&public_key_from_secret(&unhex(EX_SERVER_SECRET_HEX))),
            URL_SAFE_NO_PAD.encode(secret),
            uid,
            tag,
        ] {
            assert!(doc.contains(&needle), "docs/AUTH.md lacks {needle}");
        }
    }

    #[test]
    fn params_any_order_arbitrary_and_multiple_labels() {
        let secret = [7u8; 32];
        let pk = public_key_from_secret(&secret);
        // Odd spacing is canonicalised; parameter order is kept as received.
        let input = r#"my-label.2*=(  "@path"   "@method" );tag="t";alg="ed25519";created=5;keyid="k";nonce="n";expires=9"#;
        let canonical =
            r#"("@path" "@method");tag="t";alg="ed25519";created=5;keyid="k";nonce="n";expires=9"#;
        let h0 = headers(&[
            ("signature-input", input),
            ("signature", "my-label.2*=:AA==:"),
        ]);
        let r = req("GET", "/x", None, &h0);
        let s = &parse(&h0).unwrap()[0];
        assert_eq!(s.signature_params_line(), canonical);
        assert_eq!((s.params.created, s.params.expires), (Some(5), Some(9)));
        assert_eq!(
            (s.params.tag.as_deref(), s.params.nonce.as_deref()),
            (Some("t"), Some("n"))
        );
        assert!(s.params.covers("@path") && !s.params.covers("@query"));
        let base = signature_base(s, &r).unwrap();
        let want = format!("\"@path\": /x\n\"@method\": GET\n\"@signature-params\": {canonical}");
        assert_eq!(base, want);
        let sig1 = STANDARD.encode(
            SigningKey::from_bytes(&secret)
                .sign(base.as_bytes())
                .to_bytes(),
        );
        let (si2, sv2) = sign_ed25519("piqchat", &params(&["@method"]), &r, &secret).unwrap();
        // Two signatures, each header split over two lines.
        let sv1 = format!("my-label.2*=:{sig1}:");
        let h = headers(&[
            ("signature-input", input),
            ("signature", &sv2),
            ("signature-input", &si2),
            ("signature", &sv1),
        ]);
        let sigs = parse(&h).unwrap();
        let labels: Vec<_> = sigs.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["my-label.2*", "piqchat"]);
        for s in &sigs {
            verify_ed25519(&signature_base(s, &r).unwrap(), &s.signature, &pk).unwrap();
        }
    }

    #[test]
    fn labels_must_pair_up() {
        assert_eq!(parse(&HeaderMap::new()), Ok(vec![]));
        let h = headers(&[("signature-input", r#"a=("@method")"#)]);
        assert_eq!(parse(&h), Err(SigError::LabelMismatch("a".into())));
        let h = headers(&[
            ("signature-input", r#"a=("@method")"#),
            ("signature", "b=:AA==:"),
        ]);
        assert_eq!(parse(&h), Err(SigError::LabelMismatch("b".into())));
    }

    fn value(r: &RequestParts, c: &str) -> Result<String, SigError> {
        component_value(&ComponentId::parse(c).unwrap(), r)
    }

    /// Checks (component, expected value) pairs; `Err` entries give the error text.
    fn check(r: &RequestParts, cases: &[(&str, Result<&str, &str>)]) {
        for (c, want) in cases {
            let got = value(r, c).map_err(|e| e.to_string());
            match want {
                Ok(v) => assert_eq!(got.as_deref(), Ok(*v), "{c}"),
                Err(e) => assert!(got.as_ref().is_err_and(|g| g.contains(e)), "{c}: {got:?}"),
            }
        }
    }

    #[test]
    fn derived_components() {
        let h = HeaderMap::new();
        let mut r = req("POST", "", None, &h);
        r.authority = "Example.COM:443";
        check(
            &r,
            &[
                ("@authority", Ok("example.com")),
                ("@scheme", Ok("https")),
                ("@path", Ok("/")),
                ("@query", Ok("?")),
                ("@target-uri", Ok("https://example.com/")),
                ("@request-target", Ok("/")),
            ],
        );
        for (scheme, auth, want) in [
            ("http", "h:80", "h"),
            ("http", "h:8080", "h:8080"),
            ("HTTPS", "h:80", "h:80"),
            ("http", "[::1]:80", "[::1]"),
            ("https", "[::443]", "[::443]"),
        ] {
            (r.scheme, r.authority) = (scheme, auth);
            check(&r, &[("@authority", Ok(want))]);
        }
        r.path = "/p";
        r.query = Some("param=value&foo=bar&baz=batman&qux=&a=1&&a=2&b=%zz+%4");
        let base = build_base(
            &[ComponentId::parse(r#""@query-param";name="qux""#).unwrap()],
            "()",
            &r,
        );
        assert_eq!(
            base.unwrap(),
            "\"@query-param\";name=\"qux\": \n\"@signature-params\": ()"
        );
        check(
            &r,
            &[
                (
                    "@query",
                    Ok("?param=value&foo=bar&baz=batman&qux=&a=1&&a=2&b=%zz+%4"),
                ),
                (
                    "@request-target",
                    Ok("/p?param=value&foo=bar&baz=batman&qux=&a=1&&a=2&b=%zz+%4"),
                ),
                (r#""@query-param";name="baz""#, Ok("batman")),
                (r#""@query-param";name="qux""#, Ok("")),
                (r#""@query-param";name="b""#, Ok("%25zz%20%254")),
                (r#""@query-param";name="a""#, Err("occurs more than once")),
                (
                    r#""@query-param";name="c""#,
                    Err("query parameter `c` is missing"),
                ),
            ],
        );
        // RFC 9421 §2.2.8 examples: decode, then re-encode.
        r.query = Some(concat!(
            "var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace",
            "&fa%C3%A7ade%22%3A%20=something"
        ));
        check(
            &r,
            &[
                (
                    r#""@query-param";name="var""#,
                    Ok("this%20is%20a%20big%0Amultiline%20value"),
                ),
                (
                    r#""@query-param";name="bar""#,
                    Ok("with%20plus%20whitespace"),
                ),
                (
                    r#""@query-param";name="fa%C3%A7ade%22%3A%20""#,
                    Ok("something"),
                ),
            ],
        );
        (r.path, r.method) = ("/a\nb", "");
        check(
            &r,
            &[
                ("@path", Err("not printable")),
                ("@method", Err("is empty")),
            ],
        );
    }

    #[test]
    fn header_components() {
        let h = headers(&[
            ("x-list", " a, b "),
            ("x-list", "c\t"),
            ("x-empty", ""),
            ("content-digest", "sha-512=:AA==:,  sha-256=:AQ==:;x"),
            ("x-dict", "a=1, b=(x  y);p"),
            ("x-bad", "(("),
        ]);
        check(
            &req("GET", "/", None, &h),
            &[
                ("x-list", Ok("a, b, c")),
                ("x-empty", Ok("")),
                ("x-nope", Err("covered header `x-nope` is missing")),
                (
                    r#""content-digest";sf"#,
                    Ok("sha-512=:AA==:, sha-256=:AQ==:;x"),
                ),
                (r#""x-dict";key="b""#, Ok("(x y);p")),
                (r#""x-dict";sf;key="a""#, Ok("1")),
                (r#""x-dict";key="z""#, Err("key `z` is missing")),
                (r#""x-bad";key="a""#, Err("not a valid structured field")),
            ],
        );
        for unsupported in [r#""x-list";sf"#, r#""x-list";bs"#, r#""x-list";name="a""#] {
            assert!(ComponentId::parse(unsupported).is_err(), "{unsupported}");
        }
    }

    #[test]
    fn malformed_signature_headers() {
        let cases = [
            ("sig1=", "malformed signature-input"),
            (r#"sig1=("@method""#, "malformed signature-input"),
            (
                r#"sig1=("@method");created=@1"#,
                "malformed signature-input",
            ),
            ("sig1=(method 1)", "must be a quoted string"),
            (r#"sig1="@method""#, "must be an inner list"),
            (
                r#"sig1=("@method");created="1""#,
                "`created` has the wrong type",
            ),
            (
                r#"sig1=("@method");created=1.5"#,
                "`created` has the wrong type",
            ),
            (r#"sig1=("@method");keyid=1"#, "`keyid` has the wrong type"),
            (
                r#"sig1=("@method");foo=1"#,
                "unknown signature parameter `foo`",
            ),
            (r#"sig1=("@method" "@method")"#, "listed twice"),
            (r#"sig1=("a";sf;key="x" "a";key="x";sf)"#, "listed twice"),
            (r#"sig1=("@status")"#, "only valid in responses"),
            (r#"sig1=("@signature-params")"#, "must not be covered"),
            (r#"sig1=("@foo")"#, "unknown derived component"),
            (r#"sig1=("@method";req)"#, "unsupported component parameter"),
            (r#"sig1=("@method";foo)"#, "unknown component parameter"),
            (r#"sig1=("@method";name="x")"#, "wrong component parameters"),
            (r#"sig1=("@query-param")"#, "wrong component parameters"),
            (r#"sig1=("x";sf=?0)"#, "wrong type"),
            (r#"sig1=("Host")"#, "lowercase"),
            (r#"sig1=("bad header")"#, "not a valid header name"),
            (r#"sig1=("x-a";sf)"#, "not supported"),
            (r#"sig1=("x-a";name="q")"#, "only for"),
            (
                &format!("sig1=({})", r#""@path" "#.repeat(65)),
                "more than 64",
            ),
        ];
        for (input, want) in cases {
            let h = headers(&[("signature-input", input), ("signature", "sig1=:AA==:")]);
            let err = parse(&h).unwrap_err().to_string();
            assert!(err.contains(want), "{input}: {err}");
        }
        for sig in ["sig1=\"AA==\"", "sig1=(:AA==:)", "sig1=AA"] {
            let h = headers(&[
                ("signature-input", r#"sig1=("@method")"#),
                ("signature", sig),
            ]);
            assert_eq!(
                parse(&h),
                Err(SigError::NotByteSequence("sig1".into())),
                "{sig}"
            );
        }
        let mut h = HeaderMap::new();
        h.insert(
            "signature-input",
            HeaderValue::from_bytes(b"sig1=(\"\xc3\xa9\")").unwrap(),
        );
        assert!(matches!(parse(&h), Err(SigError::Malformed { .. })));
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let secret = [1u8; 32];
        let pk = public_key_from_secret(&secret);
        let h = HeaderMap::new();
        let r = req("GET", "/a", Some("x=1"), &h);
        let (si, sv) =
            sign_ed25519("s", &params(&["@method", "@path", "@query"]), &r, &secret).unwrap();
        let s = parse(&headers(&[("signature-input", &si), ("signature", &sv)]))
            .unwrap()
            .remove(0);
        let base = signature_base(&s, &r).unwrap();
        verify_ed25519(&base, &s.signature, &pk).unwrap();
        let other = public_key_from_secret(&[2u8; 32]);
        assert_eq!(
            verify_ed25519(&base, &s.signature, &other),
            Err(SigError::VerifyFailed)
        );
        assert_eq!(
            verify_ed25519(&format!("{base} "), &s.signature, &pk),
            Err(SigError::VerifyFailed)
        );
        let moved = signature_base(&s, &req("GET", "/b", Some("x=1"), &h)).unwrap();
        assert_eq!(
            verify_ed25519(&moved, &s.signature, &pk),
            Err(SigError::VerifyFailed)
        );
        assert_eq!(
            verify_ed25519(&base, &s.signature[1..], &pk),
            Err(SigError::SignatureLength)
        );
        let mut identity = [0u8; 32];
        identity[0] = 1; // small-order point: rejected by verify_strict
        assert!(verify_ed25519(&base, &s.signature, &identity).is_err());
        let bad_label = sign_ed25519("Bad", &params(&["@method"]), &r, &secret);
        assert!(matches!(bad_label, Err(SigError::BadInput(_))));
        let dup = sign_ed25519("s", &params(&["@method", "@method"]), &r, &secret);
        assert!(matches!(dup, Err(SigError::DuplicateComponent(_))));
    }

    #[test]
    fn content_digests() {
        // RFC 9530 / RFC 9421 examples for the body {"hello": "world"}.
        let body = br#"{"hello": "world"}"#;
        let want = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:";
        assert_eq!(content_digest_sha256(body), want);
        verify_content_digest(want, body).unwrap();
        assert!(verify_content_digest(want, b"other").is_err());
        let both = format!("md5=:AA==:, {}", content_digest_sha256(b""));
        assert_eq!(parse_content_digest(&both).unwrap().len(), 1);
        assert_eq!(parse_content_digest(&both).unwrap()[0].0, DigestAlg::Sha256);
        for bad in ["md5=:AA==:", "sha-256=:AA==:", "sha-512=abc", "((", ""] {
            assert!(parse_content_digest(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_ids_round_trip() {
        let pk = public_key_from_secret(&[3u8; 32]);
        let id = user_id(&pk);
        assert_eq!(id.len(), 43);
        assert_eq!(public_key_from_user_id(&id), Ok(pk));
        // 'B' sets one of the two unused trailing bits: non-canonical.
        for bad in [
            String::new(),
            id[..42].to_owned(),
            format!("{id}="),
            format!("{}B", &id[..42]),
        ] {
            assert_eq!(
                public_key_from_user_id(&bad),
                Err(SigError::BadPublicKey),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbled_input_never_panics() {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut rnd = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let alphabet = b"\"();=:,*?@-_. abcz019+/%&\\\tsfkeynamqury";
        for i in 0..4000 {
            let mut s: Vec<u8> = if i % 2 == 0 {
                Vec::new()
            } else {
                EX_SIGNATURE_INPUT.into()
            };
            for _ in 0..1 + rnd(if i % 2 == 0 { 40 } else { 8 }) {
                let c = alphabet[rnd(alphabet.len())];
                let at = rnd(s.len().max(1));
                match rnd(3) {
                    _ if s.is_empty() => s.push(c),
                    0 => s.insert(at, c),
                    1 => s[at] = c,
                    _ => _ = s.remove(at),
                }
            }
            let s = String::from_utf8(s).unwrap();
            let Ok(v) = HeaderValue::from_str(&s) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert("signature-input", v.clone());
            h.insert("signature", HeaderValue::from_static(EX_SIGNATURE));
            h.insert("x", v);
            let r = RequestParts {
                method: &s,
                authority: &s,
                scheme: &s,
                path: &s,
                query: Some(&s),
                headers: &h,
            };
            for sig in parse(&h).unwrap_or_default() {
                let _ = signature_base(&sig, &r);
            }
            let _ = (
                parse_content_digest(&s),
                ComponentId::parse(&s),
                query_param(&s, &s),
            );
            let _ = (
                value(&r, r#""x";key="a""#),
                value(&r, r#""content-digest";sf"#),
            );
        }
    }
}
