//! The OpenAPI 3.1 document of the HTTP/JSON API, generated at run time from
//! the gateway's [`RouteTable`] and the comments in the protos, so that it
//! cannot disagree with what the gateway serves.
//!
//! - One operation per route: `operationId` `Service_Method`, summary and
//!   description from the RPC's comment, tagged with the service's name.
//! - Schemas follow the proto3 JSON mapping as the gateway speaks it:
//!   lowerCamelCase names, 64-bit integers as strings, `bytes` as base64,
//!   enums as value names, `google.protobuf.Timestamp` as RFC 3339. Every
//!   message and enum is a `components/schemas` entry named by its full proto
//!   name and used through `$ref`, which keeps recursive messages finite.
//! - Errors are `google.rpc.Status`-shaped JSON; the signature headers of
//!   `docs/AUTH.md` are the security scheme.
//!
//! Only comments reach the document, so what the protos say is what clients
//! read: keep a comment on every service, RPC, message and field.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use prost_reflect::{
    DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};
use serde_json::{Map, Value, json};

use super::gateway::{
    BodyRule, Route, RouteMethod, RouteTable,
    transcode::{is_query_scalar, is_wrapper},
};

/// Full names of the gRPC methods that need no signature. A signature on
/// them is optional (and, when present, still checked).
pub const PUBLIC_METHODS: [&str; 2] = [
    "piqchat.inbox.v1.InfoService.GetInfo",
    "piqchat.inbox.v1.ExchangeService.AcceptExchange",
];

/// Path at which the server publishes this document.
pub const PATH: &str = "/openapi.json";

const STATUS_SCHEMA: &str = "google.rpc.Status";
const ANY_SCHEMA: &str = "google.protobuf.Any";
const PAGES_TAG: &str = "Server";

/// Builds the OpenAPI 3.1.0 document for `routes`, with descriptions taken
/// from the source comments in `pool` (which must be the pool the routes
/// were built from, compiled with source info).
pub fn document(routes: &RouteTable, pool: &DescriptorPool, server_version: &str) -> Value {
    let comments = Comments::new(pool);
    let mut schemas = Schemas::new(&comments);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags: Vec<Value> = Vec::new();
    let mut tagged: HashSet<String> = HashSet::new();

    for route in routes.iter() {
        let service = route.method().parent_service();
        if tagged.insert(service.name().to_owned()) {
            let mut tag = json!({ "name": service.name() });
            if let Some(text) = comments.of(service.parent_file().name(), service.path()) {
                tag["description"] = text.into();
            }
            tags.push(tag);
        }
        let path = openapi_path(route);
        let methods: Vec<(String, bool)> = match route.http_method() {
            RouteMethod::Exact(method) => vec![(method.as_str().to_ascii_lowercase(), false)],
            RouteMethod::Any => ["get", "put", "post", "delete", "patch"]
                .map(|m| (m.to_owned(), true))
                .into(),
        };
        for (method, any) in methods {
            if !OPENAPI_METHODS.contains(&method.as_str()) {
                tracing::debug!(%method, %path, "http method cannot be described in openapi 3.1");
                continue;
            }
            let item = paths.entry(path.clone()).or_default();
            if item.contains_key(&method) {
                // Two templates that differ only in their variables'
                // patterns; the first one wins, as in the route table.
                tracing::debug!(%method, %path, "route already described");
                continue;
            }
            let suffix = any.then_some(method.as_str());
            let operation = operation(route, suffix, &comments, &mut schemas);
            item.insert(method, operation);
        }
    }
    for (path, item) in pages() {
        paths.entry(path.to_owned()).or_default().extend(item);
    }
    tags.push(json!({
        "name": PAGES_TAG,
        "description": "Plain HTTP endpoints beside the API.",
    }));

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "piqchat inbox server",
            "version": server_version,
            "summary": "Receives end-to-end-encrypted, self-destructing images for the piqchat users who chose this server.",
            "description": INFO_DESCRIPTION,
            "license": {
                "name": "AGPL-3.0-or-later",
                "identifier": "AGPL-3.0-or-later",
            },
        },
        "tags": tags,
        "paths": paths,
        "components": {
            "schemas": schemas.finish(),
            "responses": error_responses(),
            "securitySchemes": security_schemes(),
        },
    })
}

const INFO_DESCRIPTION: &str = "\
The HTTP/JSON gateway of a piqchat inbox server. Every operation is also a gRPC method, \
served on the same port over gRPC and gRPC-web (`x-grpc-method` names it); the protos in \
`proto/piqchat/inbox/v1/` are the source of this document.

JSON follows the proto3 JSON mapping: field names in lowerCamelCase (the proto names are \
accepted too), 64-bit integers as strings, `bytes` as base64, enums as value names, \
timestamps as RFC 3339 strings. Request bodies must be `application/json`.

Calls are authenticated with an HTTP Message Signature (RFC 9421) made with the caller's \
Ed25519 key: the `Signature-Input` and `Signature` headers, specified in `docs/AUTH.md`. \
Errors are JSON shaped like `google.rpc.Status`.";

/// Methods a path item can describe in OpenAPI 3.1.
const OPENAPI_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The route's path in OpenAPI form: `{var=pattern}` becomes `{var}`;
/// literals, including a `:verb` suffix, stay as written.
fn openapi_path(route: &Route) -> String {
    let text = route.template_text();
    let mut path = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let variable = &rest[open + 1..open + close];
        let name = variable.split_once('=').map_or(variable, |(name, _)| name);
        path.push('{');
        path.push_str(name.trim());
        path.push('}');
        rest = &rest[open + close + 1..];
    }
    path.push_str(rest);
    path
}

/// The `=pattern` of each path variable that has one, by dotted name.
fn variable_patterns(route: &Route) -> HashMap<String, String> {
    let mut patterns = HashMap::new();
    let mut rest = route.template_text();
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        if let Some((name, pattern)) = rest[open + 1..open + close].split_once('=') {
            patterns.insert(name.trim().to_owned(), pattern.trim().to_owned());
        }
        rest = &rest[open + close + 1..];
    }
    patterns
}

fn operation(
    route: &Route,
    method_suffix: Option<&str>,
    comments: &Comments,
    schemas: &mut Schemas<'_>,
) -> Value {
    let method = route.method();
    let service = method.parent_service();
    let mut id = format!("{}_{}", service.name(), method.name());
    if route.binding_index() > 0 {
        id.push_str(&format!("_{}", route.binding_index()));
    }
    if let Some(suffix) = method_suffix {
        id.push('_');
        id.push_str(suffix);
    }
    let mut op = Map::new();
    op.insert("operationId".into(), id.into());
    op.insert("tags".into(), json!([service.name()]));
    if let Some(text) = comments.of(method.parent_file().name(), method.path()) {
        op.insert("summary".into(), summary(text).into());
        op.insert("description".into(), text.into());
    }
    op.insert("x-grpc-method".into(), route.grpc_path().into());

    let mut parameters = path_parameters(route, comments, schemas);
    if !matches!(route.body(), BodyRule::All) {
        parameters.extend(query_parameters(route, comments, schemas));
    }
    if !parameters.is_empty() {
        op.insert("parameters".into(), parameters.into());
    }
    if let Some(body) = request_body(route, comments, schemas) {
        op.insert("requestBody".into(), body);
    }

    let public = is_public(method);
    let mut responses = Map::new();
    responses.insert("200".into(), success_response(route, comments, schemas));
    responses.insert("401".into(), response_ref("Unauthenticated"));
    if !public {
        responses.insert("403".into(), response_ref("PermissionDenied"));
    }
    responses.insert("default".into(), response_ref("Error"));
    op.insert("responses".into(), responses.into());

    let signed = json!({ "signature": [], "signatureInput": [] });
    let security = if public {
        json!([{}, signed])
    } else {
        json!([signed])
    };
    op.insert("security".into(), security);
    op.into()
}

fn is_public(method: &MethodDescriptor) -> bool {
    PUBLIC_METHODS.contains(&method.full_name())
}

fn response_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/responses/{name}") })
}

fn path_parameters(route: &Route, comments: &Comments, schemas: &mut Schemas<'_>) -> Vec<Value> {
    let patterns = variable_patterns(route);
    route
        .path_variables()
        .filter_map(|(name, chain)| {
            let field = chain.last()?;
            let mut description = comments.of_field(field).unwrap_or_default().to_owned();
            if let Some(pattern) = patterns.get(&name) {
                append(
                    &mut description,
                    &format!("Matches the path pattern `{pattern}`."),
                );
            }
            let mut parameter = json!({
                "name": name,
                "in": "path",
                "required": true,
                "schema": schemas.kind(&field.kind()),
            });
            if !description.is_empty() {
                parameter["description"] = description.into();
            }
            Some(parameter)
        })
        .collect()
}

/// Query parameters for the request fields that neither the path nor the
/// body sets, as the gateway reads them: dotted lowerCamelCase paths into
/// singular messages, repeated scalars by repeating the parameter; maps
/// and repeated messages cannot be set from the query string.
fn query_parameters(route: &Route, comments: &Comments, schemas: &mut Schemas<'_>) -> Vec<Value> {
    let bound: Vec<Vec<u32>> = route
        .path_variables()
        .map(|(_, chain)| chain.iter().map(FieldDescriptor::number).collect())
        .collect();
    let body = match route.body() {
        BodyRule::Field(field) => Some(field.number()),
        _ => None,
    };
    let mut walk = QueryWalk {
        bound,
        body,
        comments,
        schemas,
        visiting: Vec::new(),
        out: Vec::new(),
    };
    walk.message(&route.input(), "", &[]);
    walk.out
}

struct QueryWalk<'c, 's, 'x> {
    bound: Vec<Vec<u32>>,
    body: Option<u32>,
    comments: &'c Comments,
    schemas: &'s mut Schemas<'x>,
    /// Messages on the current path, to stop at recursion.
    visiting: Vec<String>,
    out: Vec<Value>,
}

impl QueryWalk<'_, '_, '_> {
    fn message(&mut self, message: &MessageDescriptor, prefix: &str, numbers: &[u32]) {
        self.visiting.push(message.full_name().to_owned());
        for field in message.fields() {
            let mut chain = numbers.to_vec();
            chain.push(field.number());
            if self.bound.contains(&chain)
                || (numbers.is_empty() && self.body == Some(field.number()))
            {
                continue;
            }
            if field.is_map() {
                continue;
            }
            let name = format!("{prefix}{}", field.json_name());
            if let Kind::Message(inner) = field.kind()
                && !is_query_scalar(&inner)
            {
                if !field.is_list() && !self.visiting.iter().any(|m| m == inner.full_name()) {
                    self.message(&inner, &format!("{name}."), &chain);
                }
                continue;
            }
            let item = self.schemas.kind(&field.kind());
            let schema = if field.is_list() {
                json!({ "type": "array", "items": item })
            } else {
                item
            };
            let mut parameter = json!({ "name": name, "in": "query", "schema": schema });
            if let Some(text) = self.comments.of_field(&field) {
                parameter["description"] = text.into();
            }
            self.out.push(parameter);
        }
        self.visiting.pop();
    }
}

fn request_body(route: &Route, comments: &Comments, schemas: &mut Schemas<'_>) -> Option<Value> {
    let (schema, description) = match route.body() {
        BodyRule::None => return None,
        BodyRule::Field(field) => (
            schemas.field(field),
            comments.of_field(field).map(str::to_owned),
        ),
        BodyRule::All => {
            let input = route.input();
            let description = comments.of_message(&input).map(str::to_owned);
            // Top-level fields bound by the path are taken from the path, so
            // they are left out of the body.
            let from_path: Vec<FieldDescriptor> = route
                .path_variables()
                .filter(|(_, chain)| chain.len() == 1)
                .filter_map(|(_, chain)| chain.first().cloned())
                .collect();
            if from_path.is_empty() {
                (schemas.message_ref(&input), description)
            } else {
                let mut schema = schemas.message_schema(&input, &from_path);
                let names: Vec<String> = from_path
                    .iter()
                    .map(|f| format!("`{}`", f.name()))
                    .collect();
                let mut text = description.unwrap_or_default();
                append(
                    &mut text,
                    &format!("{} comes from the URL path.", names.join(", ")),
                );
                schema["description"] = text.clone().into();
                (schema, Some(text))
            }
        }
    };
    let mut body = json!({ "content": { "application/json": { "schema": schema } } });
    if let Some(text) = description {
        body["description"] = text.into();
    }
    Some(body)
}

fn success_response(route: &Route, comments: &Comments, schemas: &mut Schemas<'_>) -> Value {
    let output = route.output();
    if route.streams_raw_bytes() {
        let field = route
            .response_body()
            .map(|f| format!("`{}`", f.json_name()))
            .unwrap_or_default();
        return json!({
            "description": format!(
                "The raw bytes, streamed: the {field} field of each `{}` message, \
                 concatenated. A failure after the first bytes ends the response early \
                 (a truncated body, shorter than `Content-Length`).",
                output.name()
            ),
            "headers": {
                "Content-Length": {
                    "description": "The total size in bytes, when the server knows it.",
                    "schema": { "type": "integer", "minimum": 0 },
                },
            },
            "content": {
                "application/octet-stream": {
                    "schema": { "type": "string", "format": "binary" },
                },
            },
        });
    }
    let schema = match route.response_body() {
        Some(field) => schemas.field(field),
        None => schemas.message_ref(&output),
    };
    let description = comments
        .of_message(&output)
        .unwrap_or("The reply.")
        .to_owned();
    if route.is_server_streaming() {
        json!({
            "description": format!(
                "{description}\n\nStreamed as newline-delimited JSON: one object per line, \
                 each shaped as below."
            ),
            "content": { "application/x-ndjson": { "schema": schema } },
        })
    } else {
        json!({
            "description": description,
            "content": { "application/json": { "schema": schema } },
        })
    }
}

/// `/`, `/healthz`, `/readyz` and this document: served beside the gateway,
/// unsigned.
fn pages() -> Vec<(&'static str, Map<String, Value>)> {
    let page = |id: &str, summary: &str, description: &str, media: &str, schema: Value| {
        let mut item = Map::new();
        item.insert(
            "get".into(),
            json!({
                "operationId": id,
                "tags": [PAGES_TAG],
                "summary": summary,
                "description": description,
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": { media: { "schema": schema } },
                    },
                },
            }),
        );
        item
    };
    vec![
        (
            "/",
            page(
                "index",
                "Landing page",
                "A short page for people who open the server's address in a browser: what this \
                 server is, and a link to the piqchat app.",
                "text/html",
                json!({ "type": "string" }),
            ),
        ),
        (
            "/healthz",
            page(
                "healthz",
                "Health check",
                "Answers `ok` while the server is serving, for load balancers and container \
                 health checks. Over gRPC, `grpc.health.v1.Health` says the same.",
                "text/plain",
                json!({ "type": "string", "const": "ok\n" }),
            ),
        ),
        (
            "/readyz",
            page(
                "readyz",
                "Readiness check",
                "Answers `ready` when this instance reaches its database and attachment store, \
                 and 503 naming the one it cannot reach otherwise: what a load balancer in front \
                 of several instances should route by. Probed at most once a second.",
                "text/plain",
                json!({ "type": "string" }),
            ),
        ),
        (
            PATH,
            page(
                "openapi",
                "This OpenAPI document",
                "The OpenAPI 3.1 description of the HTTP/JSON API, generated from the protos \
                 by the running server.",
                "application/json",
                json!({ "type": "object" }),
            ),
        ),
    ]
}

fn error_responses() -> Value {
    let error = |description: &str| {
        json!({
            "description": description,
            "content": {
                "application/json": {
                    "schema": { "$ref": format!("#/components/schemas/{STATUS_SCHEMA}") },
                },
            },
        })
    };
    json!({
        "Unauthenticated": error(
            "UNAUTHENTICATED (code 16): the call needs a signature and has none, or the \
             request carries a signature that is malformed, stale (outside the `created` \
             window or past `expires`), replayed (nonce seen before), made for another \
             server (`tag`) or does not verify. A bad signature is refused even on calls \
             that need none. `message` says what to fix; see docs/AUTH.md."
        ),
        "PermissionDenied": error(
            "PERMISSION_DENIED (code 7): the signature is valid, but its key lacks the right \
             for this call, e.g. it is not registered on this server, or the recipient does \
             not accept parcels from it."
        ),
        "Error": error(
            "Any other failure, as a `google.rpc.Status`. The HTTP status follows from the gRPC \
             code as in grpc-gateway: INVALID_ARGUMENT, FAILED_PRECONDITION and OUT_OF_RANGE \
             400; NOT_FOUND 404; ALREADY_EXISTS and ABORTED 409; RESOURCE_EXHAUSTED 429 (413 \
             for a request body over the size limit); CANCELLED 499; UNIMPLEMENTED 501 (405, \
             with `Allow`, for a method the path does not take); UNAVAILABLE 503; \
             DEADLINE_EXCEEDED 504; INTERNAL, UNKNOWN and DATA_LOSS 500. A body that is not \
             `application/json` is 415."
        ),
    })
}

fn security_schemes() -> Value {
    const COMMON: &str = "Requests are signed with an HTTP Message Signature (RFC 9421, algorithm \
        `ed25519`) made with the caller's key, carried in two headers that go together: \
        `Signature-Input` (label `piqchat`; covered components at least `\"@method\" \
        \"@authority\" \"@path\"`, plus `\"@query\"` when the URL has a query; parameters \
        `created`, `nonce`, `alg=\"ed25519\"`, `keyid` = the caller's user id and `tag` = this \
        server's `serverPublicKey` from GetInfo) and `Signature` (`piqchat=:<base64>:`). A \
        signature is good once (its nonce) and only within minutes of `created`, so sign every \
        request anew, e.g. with `piqchat-inbox sign`. The full rules and a worked example are \
        in docs/AUTH.md.";
    json!({
        "signature": {
            "type": "apiKey",
            "in": "header",
            "name": "Signature",
            "description": format!("The `Signature` header. {COMMON}"),
        },
        "signatureInput": {
            "type": "apiKey",
            "in": "header",
            "name": "Signature-Input",
            "description": format!("The `Signature-Input` header. {COMMON}"),
        },
    })
}

/// JSON Schemas of messages and enums under the proto3 JSON mapping,
/// collected as `components/schemas`.
struct Schemas<'c> {
    comments: &'c Comments,
    done: BTreeMap<String, Value>,
    requested: HashSet<String>,
    pending: VecDeque<Named>,
}

enum Named {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl<'c> Schemas<'c> {
    fn new(comments: &'c Comments) -> Self {
        let mut schemas = Schemas {
            comments,
            done: BTreeMap::new(),
            requested: HashSet::new(),
            pending: VecDeque::new(),
        };
        schemas.add_fixed(ANY_SCHEMA, any_schema());
        schemas.add_fixed(STATUS_SCHEMA, status_schema());
        schemas
    }

    fn add_fixed(&mut self, name: &str, schema: Value) {
        self.requested.insert(name.to_owned());
        self.done.insert(name.to_owned(), schema);
    }

    /// Every schema referenced so far, and the ones they reference.
    fn finish(mut self) -> BTreeMap<String, Value> {
        while let Some(named) = self.pending.pop_front() {
            let (name, schema) = match &named {
                Named::Message(m) => (m.full_name().to_owned(), self.message_schema(m, &[])),
                Named::Enum(e) => (e.full_name().to_owned(), self.enum_schema(e)),
            };
            self.done.insert(name, schema);
        }
        self.done
    }

    fn reference(&mut self, name: &str, named: impl FnOnce() -> Named) -> Value {
        if self.requested.insert(name.to_owned()) {
            self.pending.push_back(named());
        }
        json!({ "$ref": format!("#/components/schemas/{name}") })
    }

    /// The schema of a message type: inline for the well-known types with
    /// a special JSON form, a `$ref` otherwise.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        if let Some(schema) = self.well_known(message) {
            return schema;
        }
        self.reference(message.full_name(), || Named::Message(message.clone()))
    }

    fn message_schema(&mut self, message: &MessageDescriptor, skip: &[FieldDescriptor]) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            if skip.contains(&field) {
                continue;
            }
            properties.insert(field.json_name().to_owned(), self.field(&field));
        }
        let mut schema = json!({ "type": "object" });
        if !properties.is_empty() {
            schema["properties"] = properties.into();
        }
        if let Some(text) = self.comments.of_message(message) {
            schema["description"] = text.into();
        }
        schema
    }

    fn enum_schema(&self, desc: &EnumDescriptor) -> Value {
        let names: Vec<String> = desc.values().map(|v| v.name().to_owned()).collect();
        let mut text = self
            .comments
            .of(desc.parent_file().name(), desc.path())
            .unwrap_or_default()
            .to_owned();
        let values: Vec<String> = desc
            .values()
            .map(|v| {
                let comment = self
                    .comments
                    .of(v.parent_file().name(), v.path())
                    .map(|c| format!(": {}", c.replace('\n', " ")))
                    .unwrap_or_default();
                format!("- `{}`{comment}", v.name())
            })
            .collect();
        append(&mut text, &values.join("\n"));
        json!({ "type": "string", "enum": names, "description": text })
    }

    /// The schema of one field: its type, made an array for `repeated` and
    /// an object for `map`, with the field's comment as description.
    fn field(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                let key = entry.map_entry_key_field().kind();
                let value = entry.map_entry_value_field().kind();
                let mut schema = json!({
                    "type": "object",
                    "additionalProperties": self.kind(&value),
                });
                let keys = match key {
                    Kind::Bool => Some(json!({ "enum": ["true", "false"] })),
                    Kind::String => None,
                    _ => Some(json!({ "pattern": "^-?[0-9]+$" })),
                };
                if let Some(keys) = keys {
                    schema["propertyNames"] = keys;
                }
                schema
            }
            kind if field.is_list() => json!({ "type": "array", "items": self.kind(&kind) }),
            kind => self.kind(&kind),
        };
        let mut text = self.comments.of_field(field).unwrap_or_default().to_owned();
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            let members: Vec<String> = oneof
                .fields()
                .map(|f| format!("`{}`", f.json_name()))
                .collect();
            append(
                &mut text,
                &format!(
                    "Part of oneof `{}`: set at most one of {}.",
                    oneof.name(),
                    members.join(", ")
                ),
            );
        }
        if !text.is_empty() {
            // JSON Schema 2020-12 allows keywords beside `$ref`.
            schema["description"] = text.into();
        }
        schema
    }

    /// The schema of one value of a field type.
    fn kind(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32" })
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({ "type": "integer", "minimum": 0, "maximum": u32::MAX })
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({ "type": "string", "format": "int64", "pattern": "^-?[0-9]+$" })
            }
            Kind::Uint64 | Kind::Fixed64 => {
                json!({ "type": "string", "format": "uint64", "pattern": "^[0-9]+$" })
            }
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
            Kind::Enum(desc) if desc.full_name() == "google.protobuf.NullValue" => {
                json!({ "type": "null" })
            }
            Kind::Enum(desc) => self.reference(desc.full_name(), || Named::Enum(desc.clone())),
            Kind::Message(message) => self.message_ref(message),
        }
    }

    /// Well-known types whose JSON form is not an object of their fields.
    fn well_known(&mut self, message: &MessageDescriptor) -> Option<Value> {
        Some(match message.full_name() {
            "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
            "google.protobuf.Duration" => json!({
                "type": "string",
                "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
                "description": "A duration in seconds with an `s` suffix, e.g. `1.5s`.",
            }),
            "google.protobuf.FieldMask" => json!({
                "type": "string",
                "description": "Comma-separated lowerCamelCase field paths.",
            }),
            "google.protobuf.Empty" => json!({ "type": "object" }),
            "google.protobuf.Struct" => json!({ "type": "object" }),
            "google.protobuf.ListValue" => json!({ "type": "array" }),
            "google.protobuf.Value" => json!({}),
            ANY_SCHEMA => json!({ "$ref": format!("#/components/schemas/{ANY_SCHEMA}") }),
            _ if is_wrapper(message) => {
                let value = message.get_field_by_name("value")?;
                self.kind(&value.kind())
            }
            _ => return None,
        })
    }
}

fn any_schema() -> Value {
    json!({
        "type": "object",
        "description": "A `google.protobuf.Any`: `@type` names the message type, the other \
            members are that message's fields (or `value`, for types with a special JSON form).",
        "properties": { "@type": { "type": "string" } },
        "required": ["@type"],
    })
}

fn status_schema() -> Value {
    json!({
        "type": "object",
        "description": "An error, shaped like `google.rpc.Status`.",
        "properties": {
            "code": {
                "type": "integer",
                "format": "int32",
                "description": "The gRPC status code, e.g. 5 for NOT_FOUND, 16 for UNAUTHENTICATED.",
            },
            "message": {
                "type": "string",
                "description": "What went wrong and, for the client's mistakes, what to fix.",
            },
            "details": {
                "type": "array",
                "description": "Machine-readable details; usually empty.",
                "items": { "$ref": format!("#/components/schemas/{ANY_SCHEMA}") },
            },
        },
        "required": ["code", "message", "details"],
    })
}

/// Leading (else trailing) comments of every element with source info,
/// by file name and `SourceCodeInfo` location path.
struct Comments(HashMap<String, HashMap<Vec<i32>, String>>);

impl Comments {
    fn new(pool: &DescriptorPool) -> Self {
        let mut files = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else {
                continue;
            };
            let mut by_path = HashMap::new();
            for location in &info.location {
                let text = location
                    .leading_comments
                    .as_deref()
                    .or(location.trailing_comments.as_deref())
                    .map(clean_comment)
                    .unwrap_or_default();
                if !text.is_empty() {
                    by_path.entry(location.path.clone()).or_insert(text);
                }
            }
            files.insert(file.name().to_owned(), by_path);
        }
        Comments(files)
    }

    fn of(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.0.get(file)?.get(path).map(String::as_str)
    }

    fn of_message(&self, message: &MessageDescriptor) -> Option<&str> {
        self.of(message.parent_file().name(), message.path())
    }

    fn of_field(&self, field: &FieldDescriptor) -> Option<&str> {
        self.of(field.parent_file().name(), field.path())
    }
}

/// A proto comment as Markdown: the one space after `//` removed, trailing
/// blanks and surrounding empty lines dropped.
fn clean_comment(raw: &str) -> String {
    let lines: Vec<&str> = raw
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    lines.join("\n").trim_matches('\n').to_owned()
}

/// The first sentence of a comment, on one line, without its full stop.
fn summary(comment: &str) -> String {
    let paragraph = comment.split("\n\n").next().unwrap_or_default();
    let flat = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut end = flat.len();
    let mut search = 0;
    while let Some(found) = flat[search..].find(". ") {
        let at = search + found;
        let before = &flat[..at];
        if !(before.ends_with("e.g") || before.ends_with("i.e") || before.ends_with("etc")) {
            end = at;
            break;
        }
        search = at + 2;
    }
    flat[..end].trim_end_matches('.').to_owned()
}

/// Appends a paragraph to a Markdown text.
fn append(text: &mut String, paragraph: &str) {
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(paragraph);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        FILE_DESCRIPTOR_SET,
        gateway::rules::fixture::{self, HttpRule, Pattern, get, method, post},
    };

    fn real() -> (RouteTable, Value) {
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptor set");
        let table = RouteTable::from_pool(&pool).expect("route table");
        let doc = document(&table, &pool, "1.2.3");
        (table, doc)
    }

    fn fixture_doc(methods: Vec<fixture::M>) -> Value {
        let pool = fixture::pool(methods);
        let table = RouteTable::from_pool(&pool).expect("route table");
        document(&table, &pool, "0")
    }

    fn schema<'a>(doc: &'a Value, name: &str) -> &'a Value {
        let schema = &doc["components"]["schemas"][name];
        assert!(schema.is_object(), "no schema {name}");
        schema
    }

    fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("$ref", Value::String(target)) => out.push(target),
                        _ => refs(value, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_route_is_an_operation() {
        let (table, doc) = real();
        assert!(table.len() >= 19, "{} routes", table.len());
        let mut operations = 0;
        for route in table.iter() {
            let RouteMethod::Exact(method) = route.http_method() else {
                panic!("unexpected * route");
            };
            let path = openapi_path(route);
            let op = &doc["paths"][&path][method.as_str().to_ascii_lowercase()];
            let expected = format!(
                "{}_{}",
                route.method().parent_service().name(),
                route.method().name()
            );
            assert_eq!(op["operationId"], expected.as_str(), "{method} {path}");
            assert_eq!(op["x-grpc-method"], route.grpc_path());
            assert_eq!(
                op["tags"][0],
                route.method().parent_service().name(),
                "{path}"
            );
            assert!(op["summary"].is_string(), "{path} has no summary");
            for (name, _) in route.path_variables() {
                assert!(path.contains(&format!("{{{name}}}")), "{path}");
                let declared = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["name"] == name.as_str()));
                assert!(declared, "{path}: path parameter {name} not declared");
            }
            operations += 1;
        }
        let total: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(
            total,
            operations + 4,
            "gateway routes plus /, /healthz, /readyz, /openapi.json"
        );
        for page in ["/", "/healthz", "/readyz", PATH] {
            assert!(doc["paths"][page]["get"].is_object(), "{page}");
        }
        assert_eq!(
            doc["paths"]["/"]["get"]["responses"]["200"]["content"]["text/html"]["schema"]["type"],
            "string"
        );
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], "1.2.3");
    }

    #[test]
    fn every_ref_resolves() {
        let (_, doc) = real();
        let mut targets = Vec::new();
        refs(&doc, &mut targets);
        assert!(targets.len() > 20);
        for target in targets {
            let pointer = target
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {target}"));
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn comments_become_descriptions() {
        let (_, doc) = real();
        let info = schema(&doc, "piqchat.inbox.v1.GetInfoResponse");
        assert_eq!(
            info["description"],
            "Everything a client needs to know about this server."
        );
        let key = &info["properties"]["serverPublicKey"];
        assert_eq!(key["type"], "string");
        assert_eq!(
            key["description"],
            "The server's Ed25519 public key, unpadded base64url (43 characters).\n\
             Signed requests must carry it as the `tag` signature parameter."
        );
        let get_info = &doc["paths"]["/v1/info"]["get"];
        assert_eq!(
            get_info["summary"],
            "Returns the server's public keys, operator details, limits and statistics"
        );
        let send = &doc["paths"]["/v1/parcels"]["post"];
        assert_eq!(
            send["summary"],
            "Stores a parcel for every recipient that accepts the caller, with one optional \
             attachment shared by all of them"
        );
        assert!(
            send["description"]
                .as_str()
                .unwrap()
                .ends_with("Any signed key.")
        );
        let tag = doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "InfoService")
            .unwrap();
        assert!(
            tag["description"]
                .as_str()
                .unwrap()
                .starts_with("Public facts about this inbox server")
        );
        let last_seen = schema(&doc, "piqchat.inbox.v1.LastSeen");
        assert!(
            last_seen["description"]
                .as_str()
                .unwrap()
                .contains("- `LAST_SEEN_RECENTLY`: Within the last 2 days.")
        );
    }

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let (_, doc) = real();
        let account = &schema(&doc, "piqchat.inbox.v1.GetAccountResponse")["properties"];
        assert_eq!(account["createdAt"]["type"], "string");
        assert_eq!(account["createdAt"]["format"], "date-time");
        assert_eq!(account["contactIds"]["type"], "array");
        assert_eq!(account["contactIds"]["items"]["type"], "string");
        assert_eq!(account["pushSubscribed"]["type"], "boolean");
        let user = &schema(&doc, "piqchat.inbox.v1.InvitedUser")["properties"];
        assert_eq!(
            user["lastSeen"]["$ref"],
            "#/components/schemas/piqchat.inbox.v1.LastSeen"
        );
        assert_eq!(user["entryId"]["type"], "integer");
        assert_eq!(user["entryId"]["minimum"], 0);
        let last_seen = schema(&doc, "piqchat.inbox.v1.LastSeen");
        assert_eq!(last_seen["type"], "string");
        assert_eq!(last_seen["enum"][1], "LAST_SEEN_NEVER");
        let send = &schema(&doc, "piqchat.inbox.v1.SendParcelRequest")["properties"];
        assert_eq!(send["attachment"]["type"], "string");
        assert_eq!(send["attachment"]["contentEncoding"], "base64");

        // The fixture has what the real protos lack: 64-bit integers, maps,
        // wrappers, oneofs and a recursive message.
        let doc = fixture_doc(vec![
            method("GetItem", "Item", "Item").rule(get("/v1/items/{name}")),
        ]);
        let item = &schema(&doc, "fixture.v1.Item")["properties"];
        assert_eq!(item["big"]["type"], "string");
        assert_eq!(item["big"]["format"], "int64");
        assert_eq!(item["ubig"]["type"], "string");
        assert_eq!(item["ids"]["items"]["type"], "string");
        assert_eq!(item["smallU"]["type"], "integer", "json name");
        assert_eq!(item["count"]["format"], "int32");
        assert_eq!(item["labels"]["type"], "object");
        assert_eq!(item["labels"]["additionalProperties"]["type"], "string");
        assert_eq!(item["limit"]["type"], "integer", "Int32Value is its number");
        assert_eq!(item["at"]["format"], "date-time");
        assert!(
            item["text"]["description"]
                .as_str()
                .unwrap()
                .contains("set at most one of `text`, `number`")
        );
        let inner = schema(&doc, "fixture.v1.Inner");
        assert_eq!(
            inner["properties"]["child"]["$ref"],
            "#/components/schemas/fixture.v1.Inner"
        );
        assert_eq!(
            schema(&doc, "fixture.v1.Color")["enum"],
            json!(["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"])
        );
    }

    #[test]
    fn bodies_and_parameters() {
        let (_, doc) = real();
        let accept = &doc["paths"]["/v1/exchanges/{token}:accept"]["post"];
        assert_eq!(accept["parameters"][0]["name"], "token");
        assert_eq!(accept["parameters"][0]["in"], "path");
        assert_eq!(
            accept["parameters"][0]["description"],
            "The exchange's token."
        );
        let body = &accept["requestBody"]["content"]["application/json"]["schema"];
        let props = body["properties"].as_object().unwrap();
        assert!(props.contains_key("answer") && props.contains_key("userId"));
        assert!(!props.contains_key("token"), "token comes from the path");
        let create = &doc["paths"]["/v1/exchanges"]["post"];
        assert_eq!(
            create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/piqchat.inbox.v1.CreateExchangeRequest"
        );
        assert!(doc["paths"]["/v1/info"]["get"]["parameters"].is_null());
        assert!(doc["paths"]["/v1/info"]["get"]["requestBody"].is_null());

        let download = &doc["paths"]["/v1/parcels/{parcel_id}/attachment"]["get"];
        let ok = &download["responses"]["200"];
        assert_eq!(
            ok["content"]["application/octet-stream"]["schema"]["format"],
            "binary"
        );
        assert!(ok["content"]["application/json"].is_null());
        assert!(ok["headers"]["Content-Length"].is_object());

        // Query parameters: the fields neither the path nor the body sets.
        let mut with_body = post("/v1/items/{name}:touch", "inner");
        with_body.response_body = "inner".into();
        let doc = fixture_doc(vec![
            method("GetItem", "Item", "Item").rule(get("/v1/items/{name}")),
            method("Touch", "Item", "Item").rule(with_body),
            method("List", "Item", "Chunk")
                .rule(HttpRule {
                    response_body: "data".into(),
                    ..get("/v1/chunks/{name=shelves/*}")
                })
                .server_streaming(),
            method("Watch", "Item", "Inner")
                .rule(fixture::rule(Pattern::Get("/v1/watch".into())))
                .server_streaming(),
        ]);
        let names = |op: &Value| -> Vec<String> {
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        let get_item = &doc["paths"]["/v1/items/{name}"]["get"];
        let query = names(get_item);
        for expected in [
            "count",
            "smallU",
            "tags",
            "ids",
            "at",
            "limit",
            "inner.label",
            "inner.depth",
            "text",
        ] {
            assert!(
                query.contains(&expected.to_owned()),
                "{expected} in {query:?}"
            );
        }
        for absent in ["name", "labels", "children", "inner.child.label"] {
            assert!(!query.contains(&absent.to_owned()), "{absent} in {query:?}");
        }
        let tags = get_item["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "tags")
            .unwrap();
        assert_eq!(tags["schema"]["type"], "array");
        let touch = &doc["paths"]["/v1/items/{name}:touch"]["post"];
        assert!(!names(touch).iter().any(|n| n.starts_with("inner")));
        assert_eq!(
            touch["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/fixture.v1.Inner"
        );
        assert_eq!(
            touch["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/fixture.v1.Inner"
        );
        let chunks = &doc["paths"]["/v1/chunks/{name}"]["get"];
        assert!(
            chunks["parameters"][0]["description"]
                .as_str()
                .unwrap()
                .contains("`shelves/*`")
        );
        let watch = &doc["paths"]["/v1/watch"]["get"]["responses"]["200"]["content"];
        assert!(watch["application/x-ndjson"]["schema"].is_object());
    }

    #[test]
    fn public_calls_need_no_signature() {
        let (table, doc) = real();
        let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
        for name in PUBLIC_METHODS {
            let (service, method) = name.rsplit_once('.').unwrap();
            assert!(
                pool.get_service_by_name(service)
                    .is_some_and(|s| s.methods().any(|m| m.name() == method)),
                "{name} is not in the protos"
            );
        }
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["signature"]["type"], "apiKey");
        assert_eq!(schemes["signature"]["in"], "header");
        assert_eq!(schemes["signature"]["name"], "Signature");
        assert_eq!(schemes["signatureInput"]["name"], "Signature-Input");
        assert!(
            schemes["signature"]["description"]
                .as_str()
                .unwrap()
                .contains("docs/AUTH.md")
        );
        let signed = json!({ "signature": [], "signatureInput": [] });
        for route in table.iter() {
            let method = route.http_method().to_string().to_ascii_lowercase();
            let op = &doc["paths"][openapi_path(route)][method];
            if is_public(route.method()) {
                assert_eq!(op["security"], json!([{}, signed]), "{}", route.grpc_path());
                assert!(op["responses"]["403"].is_null());
            } else {
                assert_eq!(op["security"], json!([signed]), "{}", route.grpc_path());
                assert!(op["responses"]["403"].is_object());
            }
            assert!(op["responses"]["401"].is_object());
            assert!(op["responses"]["default"].is_object());
        }
        assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    }

    #[test]
    fn paths_and_summaries() {
        assert_eq!(summary("Does a thing. More text."), "Does a thing");
        assert_eq!(
            summary("Uses a type, e.g. `MEDIA`. Then\nmore."),
            "Uses a type, e.g. `MEDIA`"
        );
        assert_eq!(summary("One line\nwrapped."), "One line wrapped");
        assert_eq!(clean_comment(" a\n b  \n\n c\n"), "a\nb\n\nc");
    }

    /// Writes the document to `$OPENAPI_OUT` for an external validator
    /// (see `.ci/run`).
    #[test]
    #[ignore = "writes a file; run by CI for the OpenAPI validator"]
    fn write_document() {
        let out = std::env::var_os("OPENAPI_OUT").expect("set OPENAPI_OUT to the output file");
        let (_, doc) = real();
        let text = serde_json::to_string_pretty(&doc).unwrap();
        std::fs::write(&out, text + "\n").expect("writing OPENAPI_OUT");
    }
}
