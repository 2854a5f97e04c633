//! Building the gRPC request message from an HTTP request (body, path
//! variables, query string) and turning reply messages into JSON, both with
//! the proto3 JSON mapping.
//!
//! Order of precedence follows `google/api/http.proto`: the body is parsed
//! first, path variables are set over it, and the query string fills the
//! remaining fields (only when the body is not `*`).

use std::collections::HashSet;

use base64::{
    Engine, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use bytes::Bytes;
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, SerializeOptions,
    Value,
};

use super::{
    rules::{BodyRule, Route},
    template::{Capture, decode_capture},
};

/// Why an HTTP request could not be turned into a request message. Every
/// variant is the client's fault (HTTP 400, `INVALID_ARGUMENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The body is not valid JSON for the target message.
    #[error("invalid json body: {0}")]
    Json(String),
    /// A path or query value does not fit its field's type.
    #[error("invalid value for field {field:?}: {expected}")]
    InvalidValue {
        /// Dotted field path as the client wrote it.
        field: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A query parameter names no field.
    #[error("unknown query parameter {name:?}: {message} has no field {field:?}")]
    UnknownQueryParameter {
        /// The parameter as given.
        name: String,
        /// Full name of the message searched.
        message: String,
        /// The path component that was not found.
        field: String,
    },
    /// A query parameter names a field the query string may not set.
    #[error("query parameter {name:?} cannot be used: {reason}")]
    UnusableQueryParameter {
        /// The parameter as given.
        name: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A non-repeated field was given twice.
    #[error("query parameter {name:?} is given more than once, but its field is not repeated")]
    RepeatedQueryParameter {
        /// The parameter as given.
        name: String,
    },
    /// A path variable is not UTF-8 once percent-decoded.
    #[error("path variable {field:?} is not valid utf-8 after percent-decoding")]
    PathEncoding {
        /// Dotted field path of the variable.
        field: String,
    },
    /// A query parameter is not UTF-8 once percent-decoded.
    #[error("query string is not valid utf-8 after percent-decoding: {0:?}")]
    QueryEncoding(String),
}

/// Builds the request message for `route`.
///
/// `body` must already be size-limited by the caller; an empty (or
/// whitespace-only) body counts as "no body", which for `body: "*"` means
/// `{}`.
pub(crate) fn build_request(
    route: &Route,
    captures: &[Capture],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, RequestError> {
    let input = route.input();
    let mut message = match route.body() {
        BodyRule::All => parse_body_message(&input, body)?,
        BodyRule::Field(field) => {
            let mut message = DynamicMessage::new(input.clone());
            if !is_blank(body)
                && let Some(value) = parse_body_field(&input, field, body)?
            {
                set_leaf(
                    &mut message,
                    std::slice::from_ref(field),
                    field.name(),
                    value,
                )?;
            }
            message
        }
        BodyRule::None => DynamicMessage::new(input.clone()),
    };

    for capture in captures {
        let Some(chain) = route.path_field_chain(capture.variable) else {
            continue;
        };
        let dotted = dotted(chain);
        let text = decode_capture(capture).map_err(|_| RequestError::PathEncoding {
            field: dotted.clone(),
        })?;
        let Some(leaf) = chain.last() else {
            continue;
        };
        let value = parse_scalar(&dotted, leaf, &text)?;
        set_leaf(&mut message, chain, &dotted, value)?;
    }

    if !matches!(route.body(), BodyRule::All)
        && let Some(query) = query
    {
        apply_query(route, &mut message, query)?;
    }
    Ok(message)
}

/// The JSON for a unary reply (or one streamed message): the whole message,
/// or its `response_body` field. Default-valued fields are included so
/// clients always see every field; 64-bit integers are strings, as the
/// proto3 JSON mapping says.
pub(crate) fn reply_json(
    route: &Route,
    reply: &DynamicMessage,
) -> Result<Vec<u8>, serde_json::Error> {
    let options = serialize_options();
    match route.response_body() {
        None => {
            let mut serializer = serde_json::Serializer::new(Vec::new());
            reply.serialize_with_options(&mut serializer, &options)?;
            Ok(serializer.into_inner())
        }
        Some(field) => serde_json::to_vec(&field_json(reply, field)?),
    }
}

/// The raw bytes of the route's `bytes` response field.
pub(crate) fn reply_bytes(route: &Route, reply: &DynamicMessage) -> Bytes {
    route
        .response_body()
        .and_then(|field| reply.get_field(field).as_bytes().cloned())
        .unwrap_or_default()
}

/// Serialises one message to a JSON value with the gateway's options.
pub(crate) fn message_json(
    message: &DynamicMessage,
) -> Result<serde_json::Value, serde_json::Error> {
    message.serialize_with_options(serde_json::value::Serializer, &serialize_options())
}

fn serialize_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

fn field_json(
    reply: &DynamicMessage,
    field: &FieldDescriptor,
) -> Result<serde_json::Value, serde_json::Error> {
    // prost-reflect only serialises whole messages, so serialise a copy
    // holding just this field. Setting it explicitly makes an unset message
    // field come out as `{}` rather than disappear.
    let mut only = DynamicMessage::new(reply.descriptor());
    if only
        .try_set_field(field, reply.get_field(field).into_owned())
        .is_err()
    {
        return Ok(serde_json::Value::Null);
    }
    Ok(match message_json(&only)? {
        serde_json::Value::Object(mut map) => map
            .remove(field.json_name())
            .unwrap_or(serde_json::Value::Null),
        _ => serde_json::Value::Null,
    })
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn json_error(err: impl std::fmt::Display) -> RequestError {
    RequestError::Json(err.to_string())
}

fn parse_body_message(
    input: &MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, RequestError> {
    if is_blank(body) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    // The default options deny unknown fields, and accept both the
    // lowerCamelCase json names and the original field names.
    let message =
        DynamicMessage::deserialize(input.clone(), &mut deserializer).map_err(json_error)?;
    deserializer.end().map_err(json_error)?;
    Ok(message)
}

fn parse_body_field(
    input: &MessageDescriptor,
    field: &FieldDescriptor,
    body: &[u8],
) -> Result<Option<Value>, RequestError> {
    // prost-reflect deserialises whole messages only, so wrap the body as
    // `{"<field>": <body>}` and take the field back out.
    let value: serde_json::Value = serde_json::from_slice(body).map_err(json_error)?;
    let mut wrapper = serde_json::Map::new();
    wrapper.insert(field.name().to_owned(), value);
    let mut message =
        DynamicMessage::deserialize(input.clone(), serde_json::Value::Object(wrapper))
            .map_err(json_error)?;
    Ok(message.take_field(field))
}

fn dotted(chain: &[FieldDescriptor]) -> String {
    chain
        .iter()
        .map(FieldDescriptor::name)
        .collect::<Vec<_>>()
        .join(".")
}

/// The message that holds the last field of `chain`, creating intermediate
/// messages as needed (`get_field_mut` also clears sibling oneof members).
fn parent_mut<'m>(
    message: &'m mut DynamicMessage,
    chain: &[FieldDescriptor],
    name: &str,
) -> Result<&'m mut DynamicMessage, RequestError> {
    let mut current = message;
    for field in &chain[..chain.len().saturating_sub(1)] {
        current = current
            .get_field_mut(field)
            .as_message_mut()
            .ok_or_else(|| RequestError::UnusableQueryParameter {
                name: name.to_owned(),
                reason: format!("field {:?} is not a message", field.name()),
            })?;
    }
    Ok(current)
}

fn set_leaf(
    message: &mut DynamicMessage,
    chain: &[FieldDescriptor],
    name: &str,
    value: Value,
) -> Result<(), RequestError> {
    let Some(leaf) = chain.last() else {
        return Ok(());
    };
    parent_mut(message, chain, name)?
        .try_set_field(leaf, value)
        .map_err(|err| RequestError::InvalidValue {
            field: name.to_owned(),
            expected: err.to_string(),
        })
}

fn push_leaf(
    message: &mut DynamicMessage,
    chain: &[FieldDescriptor],
    name: &str,
    value: Value,
) -> Result<(), RequestError> {
    let Some(leaf) = chain.last() else {
        return Ok(());
    };
    let parent = parent_mut(message, chain, name)?;
    match parent.get_field_mut(leaf).as_list_mut() {
        Some(list) => {
            list.push(value);
            Ok(())
        }
        None => Err(RequestError::UnusableQueryParameter {
            name: name.to_owned(),
            reason: "the field is not repeated".into(),
        }),
    }
}

/// Splits a query string into decoded `(key, value)` pairs: `+` means a
/// space and `%XX` is percent-decoding, as in HTML form encoding. Empty
/// pairs (`a=1&&b=2`) are skipped.
pub(crate) fn parse_query(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let mut pairs = Vec::new();
    for pair in query.split('&') {
        if pair.is_empty() {
            continue;
        }
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decode(key)?;
        if key.is_empty() {
            return Err(RequestError::UnusableQueryParameter {
                name: String::new(),
                reason: "a query parameter has an empty name".into(),
            });
        }
        pairs.push((key, form_decode(value)?));
    }
    Ok(pairs)
}

fn form_decode(text: &str) -> Result<String, RequestError> {
    let plus_as_space = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|cow| cow.into_owned())
        .map_err(|_| RequestError::QueryEncoding(text.to_owned()))
}

fn apply_query(
    route: &Route,
    message: &mut DynamicMessage,
    query: &str,
) -> Result<(), RequestError> {
    let input = route.input();
    let path_bound: Vec<Vec<u32>> = route
        .path_variables()
        .map(|(_, chain)| chain.iter().map(FieldDescriptor::number).collect())
        .collect();
    let body_field = match route.body() {
        BodyRule::Field(field) => Some(field.number()),
        _ => None,
    };
    let mut seen: HashSet<Vec<u32>> = HashSet::new();

    for (key, value) in parse_query(query)? {
        let chain = resolve_query_key(&input, &key)?;
        let numbers: Vec<u32> = chain.iter().map(FieldDescriptor::number).collect();
        // Letting the query string override a path variable would let
        // `?name=other` change which resource a path names.
        if path_bound.contains(&numbers) {
            return Err(RequestError::UnusableQueryParameter {
                name: key,
                reason: "its field is already bound by the url path".into(),
            });
        }
        if body_field.is_some() && numbers.first() == body_field.as_ref() {
            return Err(RequestError::UnusableQueryParameter {
                name: key,
                reason: "its field comes from the request body".into(),
            });
        }
        let Some(leaf) = chain.last() else {
            continue;
        };
        if leaf.is_map() {
            return Err(RequestError::UnusableQueryParameter {
                name: key,
                reason: "map fields cannot be set from the query string; send them in a json body"
                    .into(),
            });
        }
        let parsed = parse_scalar(&key, leaf, &value)?;
        if leaf.is_list() {
            push_leaf(message, &chain, &key, parsed)?;
        } else {
            if !seen.insert(numbers) {
                return Err(RequestError::RepeatedQueryParameter { name: key });
            }
            // Same rule as the JSON mapping: one member per oneof.
            let parent = parent_mut(message, &chain, &key)?;
            if let Some(oneof) = leaf.containing_oneof()
                && let Some(other) = oneof
                    .fields()
                    .find(|f| f.number() != leaf.number() && parent.has_field(f))
            {
                return Err(RequestError::UnusableQueryParameter {
                    name: key,
                    reason: format!(
                        "oneof {:?} already has field {:?} set; set only one of its fields",
                        oneof.name(),
                        other.name()
                    ),
                });
            }
            set_leaf(message, &chain, &key, parsed)?;
        }
    }
    Ok(())
}

/// Resolves `a.b.c` (original or json field names) against `input`; every
/// step but the last must be a singular message field.
fn resolve_query_key(
    input: &MessageDescriptor,
    key: &str,
) -> Result<Vec<FieldDescriptor>, RequestError> {
    let mut chain = Vec::new();
    let mut message = input.clone();
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let field = message
            .get_field_by_name(part)
            .or_else(|| message.get_field_by_json_name(part))
            .ok_or_else(|| RequestError::UnknownQueryParameter {
                name: key.to_owned(),
                message: message.full_name().to_owned(),
                field: (*part).to_owned(),
            })?;
        if i + 1 < parts.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => message = next,
                _ => {
                    return Err(RequestError::UnusableQueryParameter {
                        name: key.to_owned(),
                        reason: format!(
                            "field {:?} is not a singular message, so it has no sub-fields to set",
                            field.name()
                        ),
                    });
                }
            }
        }
        chain.push(field);
    }
    Ok(chain)
}

fn invalid(field: &str, expected: impl Into<String>) -> RequestError {
    RequestError::InvalidValue {
        field: field.to_owned(),
        expected: expected.into(),
    }
}

/// Converts one path or query value to the field's (element) type.
fn parse_scalar(name: &str, field: &FieldDescriptor, text: &str) -> Result<Value, RequestError> {
    parse_kind(name, &field.kind(), text)
}

fn parse_kind(name: &str, kind: &Kind, text: &str) -> Result<Value, RequestError> {
    let int_error = |bits: u32, signed: bool| {
        invalid(
            name,
            if signed {
                format!("expected an integer that fits in {bits} bits")
            } else {
                format!("expected a non-negative integer that fits in {bits} bits")
            },
        )
    };
    Ok(match kind {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => match text.to_ascii_lowercase().as_str() {
            "true" | "1" => Value::Bool(true),
            "false" | "0" => Value::Bool(false),
            _ => return Err(invalid(name, "expected true or false")),
        },
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            Value::I32(text.parse().map_err(|_| int_error(32, true))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
            Value::I64(text.parse().map_err(|_| int_error(64, true))?)
        }
        Kind::Uint32 | Kind::Fixed32 => Value::U32(text.parse().map_err(|_| int_error(32, false))?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(text.parse().map_err(|_| int_error(64, false))?),
        // Rust's float parser also takes the JSON spellings "Infinity",
        // "-Infinity" and "NaN".
        Kind::Float => Value::F32(
            text.parse()
                .map_err(|_| invalid(name, "expected a number"))?,
        ),
        Kind::Double => Value::F64(
            text.parse()
                .map_err(|_| invalid(name, "expected a number"))?,
        ),
        Kind::Bytes => Value::Bytes(decode_base64(text).ok_or_else(|| {
            invalid(name, "expected base64 or base64url data (padding optional)")
        })?),
        Kind::Enum(desc) => match desc.get_value_by_name(text) {
            Some(value) => Value::EnumNumber(value.number()),
            None => match text.parse::<i32>() {
                Ok(number) => Value::EnumNumber(number),
                Err(_) => {
                    let names: Vec<_> = desc.values().map(|v| v.name().to_owned()).collect();
                    return Err(invalid(
                        name,
                        format!("expected one of {} or an enum number", names.join(", ")),
                    ));
                }
            },
        },
        Kind::Message(desc) => parse_message_scalar(name, desc, text)?,
    })
}

/// Messages that have a scalar JSON form (timestamps, durations, field
/// masks, wrappers): one query value can set them (`parse_message_scalar`).
pub fn is_query_scalar(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
    ) || is_wrapper(message)
}

/// The `google.protobuf` wrapper messages (`Int32Value`, ...).
pub fn is_wrapper(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

fn parse_message_scalar(
    name: &str,
    desc: &MessageDescriptor,
    text: &str,
) -> Result<Value, RequestError> {
    match desc.full_name() {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" => {
            let hint = match desc.full_name() {
                "google.protobuf.Timestamp" => {
                    "expected an rfc 3339 timestamp such as 2024-05-01T12:00:00Z"
                }
                "google.protobuf.Duration" => "expected a duration in seconds such as 1.5s",
                _ => "expected comma-separated lowerCamelCase field paths",
            };
            DynamicMessage::deserialize(desc.clone(), serde_json::Value::String(text.to_owned()))
                .map(Value::Message)
                .map_err(|_| invalid(name, hint))
        }
        _ if is_wrapper(desc) => {
            let Some(inner) = desc.get_field_by_name("value") else {
                return Err(invalid(name, "malformed wrapper type"));
            };
            let value = parse_kind(name, &inner.kind(), text)?;
            let mut message = DynamicMessage::new(desc.clone());
            message
                .try_set_field(&inner, value)
                .map_err(|err| invalid(name, err.to_string()))?;
            Ok(Value::Message(message))
        }
        other => Err(RequestError::UnusableQueryParameter {
            name: name.to_owned(),
            reason: format!(
                "its field is a message ({other}); set its fields one by one, e.g. \"{name}.<field>=value\""
            ),
        }),
    }
}

/// Standard or URL-safe base64, padded or not (the proto3 JSON mapping
/// accepts both alphabets).
fn decode_base64(text: &str) -> Option<Bytes> {
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, CONFIG);
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE
    } else {
        &STANDARD
    };
    engine.decode(text).ok().map(Bytes::from)
}

#[cfg(test)]
mod tests {
    use super::super::rules::{Lookup, RouteTable, fixture::*};
    use super::*;
    use serde_json::json;

    /// Routes over the fixture's `Item` message, one per body rule.
    fn table() -> RouteTable {
        let mut get_rule = get("/v1/items/{name}");
        get_rule.additional_bindings = vec![
            get("/v1/typed/{count}/{flag}/{color}/{blob}/{ratio}/{big}/{ubig}/{small}/{small_u}"),
            get("/v1/inner/{inner.child.label}"),
            get("/v1/files/{name=**}"),
        ];
        let mut response_inner = get("/v1/items/{name}/inner");
        response_inner.response_body = "inner".into();
        let mut response_tags = get("/v1/items/{name}/tags");
        response_tags.response_body = "tags".into();
        RouteTable::from_pool(&pool(vec![
            method("Get", "Item", "Item").rule(get_rule),
            method("Create", "Item", "Item").rule(post("/v1/items/{name}", "*")),
            method("Update", "Item", "Item").rule(post("/v1/items/{name}:update", "inner")),
            method("GetInner", "Item", "Item").rule(response_inner),
            method("GetTags", "Item", "Item").rule(response_tags),
        ]))
        .unwrap()
    }

    fn build(
        table: &RouteTable,
        method: http::Method,
        path_and_query: &str,
        body: &str,
    ) -> Result<serde_json::Value, RequestError> {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        let Lookup::Found(route, captures) = table.find(&method, path) else {
            panic!("no route for {path}");
        };
        let message = build_request(route, &captures, query, body.as_bytes())?;
        Ok(message_json(&message).unwrap())
    }

    fn ok(table: &RouteTable, method: http::Method, path: &str, body: &str) -> serde_json::Value {
        build(table, method, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    fn bad(table: &RouteTable, method: http::Method, path: &str, body: &str) -> String {
        build(table, method, path, body)
            .expect_err("expected a request error")
            .to_string()
    }

    #[test]
    fn body_star_parses_whole_message_and_path_overrides() {
        let t = table();
        let v = ok(
            &t,
            http::Method::POST,
            "/v1/items/from-path",
            r#"{"name":"from-body","count":3,"smallU":7,"small_u":8,"tags":["a","b"],"labels":{"k":"v"},"at":"2024-05-01T12:00:00Z","limit":5,"big":"9007199254740993","blob":"AAEC","color":"COLOR_RED","inner":{"label":"x"}}"#,
        );
        assert_eq!(v["name"], "from-path");
        assert_eq!(v["count"], 3);
        assert_eq!(v["smallU"], 8);
        assert_eq!(v["tags"], json!(["a", "b"]));
        assert_eq!(v["labels"], json!({"k": "v"}));
        assert_eq!(v["at"], "2024-05-01T12:00:00Z");
        assert_eq!(v["limit"], 5);
        assert_eq!(v["big"], "9007199254740993");
        assert_eq!(v["blob"], "AAEC");
        assert_eq!(v["color"], "COLOR_RED");
        assert_eq!(v["inner"]["label"], "x");
    }

    #[test]
    fn empty_body_is_an_empty_message() {
        let t = table();
        let v = ok(&t, http::Method::POST, "/v1/items/a", "");
        assert_eq!(v["name"], "a");
        let v = ok(&t, http::Method::POST, "/v1/items/a", "  \n");
        assert_eq!(v["count"], 0);
    }

    #[test]
    fn body_star_ignores_the_query_string() {
        let t = table();
        let v = ok(&t, http::Method::POST, "/v1/items/a?count=5&nope=1", "{}");
        assert_eq!(v["count"], 0);
    }

    #[test]
    fn rejects_bad_json_bodies_naming_the_problem() {
        let t = table();
        let e = bad(&t, http::Method::POST, "/v1/items/a", r#"{"nope":1}"#);
        assert!(
            e.starts_with("invalid json body") && e.contains("nope"),
            "{e}"
        );
        let e = bad(&t, http::Method::POST, "/v1/items/a", r#"{"count":"x"}"#);
        assert!(e.starts_with("invalid json body"), "{e}");
        let e = bad(
            &t,
            http::Method::POST,
            "/v1/items/a",
            r#"{"count":1} trailing"#,
        );
        assert!(e.starts_with("invalid json body"), "{e}");
        let e = bad(
            &t,
            http::Method::POST,
            "/v1/items/a",
            r#"{"text":"a","number":1}"#,
        );
        assert!(e.contains("oneof"), "{e}");
        let e = bad(&t, http::Method::POST, "/v1/items/a", "[1,2]");
        assert!(e.starts_with("invalid json body"), "{e}");
    }

    #[test]
    fn body_field_goes_into_that_field_and_query_fills_the_rest() {
        let t = table();
        // `inner2` is unknown: the whole request fails.
        let e = bad(
            &t,
            http::Method::POST,
            "/v1/items/a:update?count=2&inner2=",
            r#"{"label":"l"}"#,
        );
        assert!(e.contains("unknown query parameter \"inner2\""), "{e}");

        let v = ok(
            &t,
            http::Method::POST,
            "/v1/items/a:update?count=2&tags=x&tags=y+z",
            r#"{"label":"l","depth":4}"#,
        );
        assert_eq!(v["name"], "a");
        assert_eq!(v["count"], 2);
        assert_eq!(v["tags"], json!(["x", "y z"]));
        assert_eq!(v["inner"], json!({"label": "l", "depth": 4}));

        // Query parameters may not reach into the body field.
        let e = bad(
            &t,
            http::Method::POST,
            "/v1/items/a:update?inner.depth=1",
            "{}",
        );
        assert!(e.contains("comes from the request body"), "{e}");
        let e = bad(
            &t,
            http::Method::POST,
            "/v1/items/a:update",
            r#"{"nope":1}"#,
        );
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn path_variables_are_typed() {
        let t = table();
        let v = ok(
            &t,
            http::Method::GET,
            "/v1/typed/-7/true/COLOR_BLUE/AAEC_w/1.5/-9007199254740993/18446744073709551615/Infinity/4294967295",
            "",
        );
        assert_eq!(v["count"], -7);
        assert_eq!(v["flag"], true);
        assert_eq!(v["color"], "COLOR_BLUE");
        assert_eq!(v["blob"], "AAEC/w==");
        assert_eq!(v["ratio"], 1.5);
        assert_eq!(v["big"], "-9007199254740993");
        assert_eq!(v["ubig"], "18446744073709551615");
        assert_eq!(v["small"], "Infinity");
        assert_eq!(v["smallU"], 4294967295u32);

        let v = ok(
            &t,
            http::Method::GET,
            "/v1/typed/0/0/2/AAEC%2Fw%3D%3D/1e3/0/0/NaN/0",
            "",
        );
        assert_eq!(v["color"], "COLOR_BLUE");
        assert_eq!(v["flag"], false);
        assert_eq!(v["blob"], "AAEC/w==");
        assert_eq!(v["ratio"], 1000.0);
    }

    #[test]
    fn path_values_that_do_not_fit_are_rejected() {
        let t = table();
        let base = ["0", "true", "COLOR_RED", "AA", "1", "1", "1", "1", "1"];
        let cases = [
            (
                0,
                "x",
                "invalid value for field \"count\": expected an integer that fits in 32 bits",
            ),
            (0, "2147483648", "fits in 32 bits"),
            (1, "yes", "expected true or false"),
            (
                2,
                "COLOR_GREEN",
                "expected one of COLOR_UNSPECIFIED, COLOR_RED, COLOR_BLUE",
            ),
            (3, "!!", "expected base64"),
            (4, "one", "expected a number"),
            (6, "-1", "non-negative integer"),
            (8, "4294967296", "non-negative integer that fits in 32 bits"),
        ];
        for (index, value, expected) in cases {
            let mut parts = base;
            parts[index] = value;
            let path = format!("/v1/typed/{}", parts.join("/"));
            let e = bad(&t, http::Method::GET, &path, "");
            assert!(e.contains(expected), "{path}: {e}");
        }
        let e = bad(&t, http::Method::GET, "/v1/items/%FF", "");
        assert!(e.contains("not valid utf-8"), "{e}");
    }

    #[test]
    fn nested_path_variables_and_deep_wildcards() {
        let t = table();
        let v = ok(&t, http::Method::GET, "/v1/inner/a%2Fb", "");
        assert_eq!(v["inner"]["child"]["label"], "a/b");
        let v = ok(&t, http::Method::GET, "/v1/files/dir/a%2Fb%20c", "");
        assert_eq!(v["name"], "dir/a%2Fb c");
    }

    #[test]
    fn query_parameters_set_remaining_fields() {
        let t = table();
        let v = ok(
            &t,
            http::Method::GET,
            "/v1/items/a?count=3&small_u=4&inner.label=%C3%A9t%C3%A9&inner.child.depth=2\
             &ids=1&ids=-2&tags=&at=2024-05-01T12%3A00%3A00Z&limit=9&number=5&color=1&blob=-_8",
            "",
        );
        assert_eq!(v["name"], "a");
        assert_eq!(v["count"], 3);
        assert_eq!(v["smallU"], 4);
        assert_eq!(v["inner"]["label"], "été");
        assert_eq!(v["inner"]["child"]["depth"], 2);
        assert_eq!(v["ids"], json!(["1", "-2"]));
        assert_eq!(v["tags"], json!([""]));
        assert_eq!(v["at"], "2024-05-01T12:00:00Z");
        assert_eq!(v["limit"], 9);
        assert_eq!(v["number"], 5);
        assert_eq!(v["color"], "COLOR_RED");
        assert_eq!(v["blob"], "+/8=");
        // json names work too.
        let v = ok(&t, http::Method::GET, "/v1/items/a?smallU=1&text=t", "");
        assert_eq!(v["smallU"], 1);
        assert_eq!(v["text"], "t");
        assert!(v.get("number").is_none(), "{v}");
    }

    #[test]
    fn bad_query_parameters_are_named() {
        let t = table();
        let cases = [
            (
                "nope=1",
                "unknown query parameter \"nope\": fixture.v1.Item has no field \"nope\"",
            ),
            ("inner.nope=1", "fixture.v1.Inner has no field \"nope\""),
            (
                "count=1&count=2",
                "query parameter \"count\" is given more than once",
            ),
            ("count=x", "invalid value for field \"count\""),
            ("name=b", "already bound by the url path"),
            ("labels=x", "map fields cannot be set"),
            ("inner=x", "set its fields one by one"),
            ("children.label=x", "not a singular message"),
            ("count.x=1", "not a singular message"),
            ("at=yesterday", "rfc 3339"),
            ("limit=many", "invalid value for field \"limit\""),
            ("%FF=1", "not valid utf-8"),
            ("=1", "empty name"),
            ("a..b=1", "unknown query parameter"),
            (
                "number=2&text=t",
                "oneof \"choice\" already has field \"number\" set",
            ),
        ];
        for (query, expected) in cases {
            let e = bad(&t, http::Method::GET, &format!("/v1/items/a?{query}"), "");
            assert!(e.contains(expected), "{query}: {e}");
        }
    }

    #[test]
    fn replies_include_defaults_and_honour_response_body() {
        let t = table();
        let routes: Vec<_> = t.iter().collect();
        let get_route = routes.iter().find(|r| r.method().name() == "Get").unwrap();
        let reply = DynamicMessage::new(get_route.output());
        let v: serde_json::Value =
            serde_json::from_slice(&reply_json(get_route, &reply).unwrap()).unwrap();
        assert_eq!(v["count"], 0);
        assert_eq!(v["flag"], false);
        assert_eq!(v["name"], "");
        assert_eq!(v["big"], "0");
        assert_eq!(v["tags"], json!([]));
        assert_eq!(v["color"], "COLOR_UNSPECIFIED");
        assert!(v.get("inner").is_none());

        let inner_route = routes
            .iter()
            .find(|r| r.method().name() == "GetInner")
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&reply_json(inner_route, &reply).unwrap()).unwrap();
        assert_eq!(v, json!({"label": "", "depth": 0}));

        let tags_route = routes
            .iter()
            .find(|r| r.method().name() == "GetTags")
            .unwrap();
        let mut reply = DynamicMessage::new(tags_route.output());
        reply.set_field_by_name("tags", Value::List(vec![Value::String("a".into())]));
        let v: serde_json::Value =
            serde_json::from_slice(&reply_json(tags_route, &reply).unwrap()).unwrap();
        assert_eq!(v, json!(["a"]));
    }

    #[test]
    fn fuzz_query_parser_never_panics() {
        let alphabet = [
            "&", "=", "+", "%", "%2", "%20", "%FF", "%C3%A9", ".", "a", "count", "inner", "label",
            "tags", "é", "1", "-", "x", "at", "labels", "name", "\u{0}",
        ];
        let t = table();
        let route = t.iter().find(|r| r.method().name() == "Get").unwrap();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = (next() % 12) as usize;
            let query: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let _ = parse_query(&query);
            let _ = build_request(route, &[], Some(&query), b"");
        }
    }
}
