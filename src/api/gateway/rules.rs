//! The route table: one [`Route`] per `google.api.http` binding found in a
//! [`DescriptorPool`], validated against the request and response message
//! types at start-up so that a bad annotation fails the server's start
//! instead of a request.

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, Value,
};

use super::{
    GatewayError,
    template::{Capture, Segment, Template},
};

/// Full name of the `google.api.http` method option.
pub const HTTP_RULE_EXTENSION: &str = "google.api.http";

/// `google.api.HttpRule`, hand-written because the gateway must not depend
/// on generated code of the crate that embeds it. Tags follow
/// `google/api/http.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct HttpRule {
    #[prost(string, tag = "1")]
    pub selector: String,
    #[prost(oneof = "Pattern", tags = "2, 3, 4, 5, 6, 8")]
    pub pattern: Option<Pattern>,
    #[prost(string, tag = "7")]
    pub body: String,
    #[prost(message, repeated, tag = "11")]
    pub additional_bindings: Vec<HttpRule>,
    #[prost(string, tag = "12")]
    pub response_body: String,
}

/// `google.api.HttpRule.pattern`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(crate) enum Pattern {
    #[prost(string, tag = "2")]
    Get(String),
    #[prost(string, tag = "3")]
    Put(String),
    #[prost(string, tag = "4")]
    Post(String),
    #[prost(string, tag = "5")]
    Delete(String),
    #[prost(string, tag = "6")]
    Patch(String),
    #[prost(message, tag = "8")]
    Custom(CustomHttpPattern),
}

/// `google.api.CustomHttpPattern`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CustomHttpPattern {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(string, tag = "2")]
    pub path: String,
}

/// The HTTP method a route answers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteMethod {
    /// One HTTP method.
    Exact(http::Method),
    /// `custom { kind: "*" }`: every HTTP method.
    Any,
}

impl RouteMethod {
    fn matches(&self, method: &http::Method) -> bool {
        match self {
            RouteMethod::Exact(m) => m == method,
            RouteMethod::Any => true,
        }
    }
}

impl std::fmt::Display for RouteMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteMethod::Exact(m) => f.write_str(m.as_str()),
            RouteMethod::Any => f.write_str("*"),
        }
    }
}

/// Where the request body goes (`HttpRule.body`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// `body: ""`: the request has no body; unbound fields come from the
    /// query string.
    None,
    /// `body: "*"`: the body is the request message; the query string is
    /// not used.
    All,
    /// `body: "field"`: the body is this top-level request field; other
    /// unbound fields come from the query string.
    Field(FieldDescriptor),
}

/// One HTTP binding of one gRPC method.
#[derive(Debug)]
pub struct Route {
    method: MethodDescriptor,
    http_method: RouteMethod,
    template: Template,
    body: BodyRule,
    response_body: Option<FieldDescriptor>,
    /// Field chain for each template variable, same order as
    /// `template.variables()`.
    path_fields: Vec<Vec<FieldDescriptor>>,
    grpc_path: String,
    binding: usize,
}

impl Route {
    /// The gRPC method this route calls.
    pub fn method(&self) -> &MethodDescriptor {
        &self.method
    }

    /// The HTTP method this route answers to.
    pub fn http_method(&self) -> &RouteMethod {
        &self.http_method
    }

    /// The parsed path template.
    pub fn template(&self) -> &Template {
        &self.template
    }

    /// The path template as written in the proto.
    pub fn template_text(&self) -> &str {
        self.template.as_str()
    }

    /// Where the request body goes.
    pub fn body(&self) -> &BodyRule {
        &self.body
    }

    /// The response field that becomes the HTTP body, if not the whole
    /// message.
    pub fn response_body(&self) -> Option<&FieldDescriptor> {
        self.response_body.as_ref()
    }

    /// The request message type.
    pub fn input(&self) -> MessageDescriptor {
        self.method.input()
    }

    /// The response message type.
    pub fn output(&self) -> MessageDescriptor {
        self.method.output()
    }

    /// The gRPC path, `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        &self.grpc_path
    }

    /// Full name of the gRPC service, `package.Service`.
    pub fn service_name(&self) -> &str {
        self.method.parent_service().full_name()
    }

    /// Whether the method streams its responses.
    pub fn is_server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }

    /// 0 for the main binding, `n` for the n-th `additional_bindings` entry.
    pub fn binding_index(&self) -> usize {
        self.binding
    }

    /// For each path variable: its dotted field path and the resolved field
    /// chain (outermost first).
    pub fn path_variables(&self) -> impl Iterator<Item = (String, &[FieldDescriptor])> + '_ {
        self.template
            .variables()
            .iter()
            .zip(&self.path_fields)
            .map(|(var, chain)| (var.dotted(), chain.as_slice()))
    }

    /// Whether the response is streamed as raw bytes of a `bytes` field.
    pub fn streams_raw_bytes(&self) -> bool {
        self.is_server_streaming()
            && self
                .response_body
                .as_ref()
                .is_some_and(|f| f.kind() == Kind::Bytes && !f.is_list())
    }

    pub(crate) fn path_field_chain(&self, variable: usize) -> Option<&[FieldDescriptor]> {
        self.path_fields.get(variable).map(Vec::as_slice)
    }

    fn describe(&self) -> String {
        format!(
            "{} {} ({})",
            self.http_method,
            self.template.as_str(),
            self.method.full_name()
        )
    }
}

/// Result of looking a request up in the table.
#[derive(Debug)]
pub(crate) enum Lookup<'a> {
    Found(&'a Arc<Route>, Vec<Capture>),
    /// The path matches, but only for these methods.
    MethodNotAllowed(Vec<http::Method>),
    NotFound,
}

/// All HTTP routes of a descriptor pool.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Declaration order (service, method, binding), for listing.
    declared: Vec<Arc<Route>>,
    /// Most specific first, for matching.
    by_specificity: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from every method in `pool` that carries a
    /// `google.api.http` option. Client-streaming and bidirectional methods
    /// are skipped: their requests cannot come from one HTTP body.
    ///
    /// The pool must be decoded from *encoded* descriptor bytes
    /// (`DescriptorPool::decode`) so the extension options survive.
    pub fn from_pool(pool: &DescriptorPool) -> Result<RouteTable, GatewayError> {
        let Some(extension) = pool.get_extension_by_name(HTTP_RULE_EXTENSION) else {
            tracing::warn!(
                "descriptor pool has no {HTTP_RULE_EXTENSION} extension \
                 (google/api/annotations.proto not compiled in); no http routes"
            );
            return Ok(RouteTable::default());
        };
        let mut declared = Vec::new();
        for service in pool.services() {
            for method in service.methods() {
                let Some(rule) = read_rule(&method, &extension)? else {
                    continue;
                };
                if method.is_client_streaming() {
                    tracing::debug!(
                        method = method.full_name(),
                        "skipping http rule of a client-streaming method"
                    );
                    continue;
                }
                declared.push(Arc::new(build_route(&method, &rule, 0)?));
                for (i, extra) in rule.additional_bindings.iter().enumerate() {
                    if !extra.additional_bindings.is_empty() {
                        return Err(invalid(
                            &method,
                            "additional_bindings must not contain additional_bindings",
                        ));
                    }
                    declared.push(Arc::new(build_route(&method, extra, i + 1)?));
                }
            }
        }
        Self::from_routes(declared)
    }

    fn from_routes(declared: Vec<Arc<Route>>) -> Result<RouteTable, GatewayError> {
        let mut seen: HashMap<(RouteMethod, Vec<Segment>, Option<String>), &Route> = HashMap::new();
        for route in &declared {
            let (segments, verb) = route.template.shape();
            if let Some(first) = seen.insert((route.http_method.clone(), segments, verb), route) {
                return Err(GatewayError::Conflict {
                    first: first.describe(),
                    second: route.describe(),
                });
            }
        }
        let mut by_specificity = declared.clone();
        // Stable sort: equally specific templates keep declaration order,
        // and an exact method beats `*` for the same shape.
        by_specificity.sort_by(|a, b| {
            a.template.specificity_cmp(&b.template).then_with(|| {
                matches!(a.http_method, RouteMethod::Any)
                    .cmp(&matches!(b.http_method, RouteMethod::Any))
            })
        });
        Ok(RouteTable {
            declared,
            by_specificity,
        })
    }

    /// The routes in declaration order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Route> + '_ {
        self.declared.iter().map(Arc::as_ref)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.declared.len()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
    }

    /// Finds the most specific route matching `path` (raw, percent-encoded)
    /// and `method`.
    pub(crate) fn find(&self, method: &http::Method, path: &str) -> Lookup<'_> {
        let mut allowed: Vec<http::Method> = Vec::new();
        for route in &self.by_specificity {
            let Some(captures) = route.template.match_path(path) else {
                continue;
            };
            if route.http_method.matches(method) {
                return Lookup::Found(route, captures);
            }
            if let RouteMethod::Exact(m) = &route.http_method
                && !allowed.contains(m)
            {
                allowed.push(m.clone());
            }
        }
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

fn invalid(method: &MethodDescriptor, message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidRule {
        method: method.full_name().to_owned(),
        message: message.into(),
    }
}

fn read_rule(
    method: &MethodDescriptor,
    extension: &ExtensionDescriptor,
) -> Result<Option<HttpRule>, GatewayError> {
    let options = method.options();
    if !options.has_extension(extension) {
        return Ok(None);
    }
    match options.get_extension(extension).as_ref() {
        Value::Message(message) => message
            .transcode_to::<HttpRule>()
            .map(Some)
            .map_err(|err| invalid(method, format!("cannot decode the http option: {err}"))),
        _ => Err(invalid(
            method,
            format!("{HTTP_RULE_EXTENSION} is not a google.api.HttpRule message"),
        )),
    }
}

fn build_route(
    method: &MethodDescriptor,
    rule: &HttpRule,
    binding: usize,
) -> Result<Route, GatewayError> {
    let (http_method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (RouteMethod::Exact(http::Method::GET), p),
        Some(Pattern::Put(p)) => (RouteMethod::Exact(http::Method::PUT), p),
        Some(Pattern::Post(p)) => (RouteMethod::Exact(http::Method::POST), p),
        Some(Pattern::Delete(p)) => (RouteMethod::Exact(http::Method::DELETE), p),
        Some(Pattern::Patch(p)) => (RouteMethod::Exact(http::Method::PATCH), p),
        Some(Pattern::Custom(custom)) => {
            let m = match custom.kind.as_str() {
                "*" => RouteMethod::Any,
                kind => http::Method::from_bytes(kind.as_bytes())
                    .ok()
                    .filter(|_| !kind.is_empty())
                    .map(RouteMethod::Exact)
                    .ok_or_else(|| {
                        invalid(
                            method,
                            format!("custom http method {kind:?} is not a valid http method token"),
                        )
                    })?,
            };
            (m, &custom.path)
        }
        None => {
            return Err(invalid(
                method,
                "http rule has no pattern; set one of get, put, post, delete, patch or custom",
            ));
        }
    };
    let template = Template::parse(path).map_err(|err| GatewayError::Template {
        method: method.full_name().to_owned(),
        reason: err,
    })?;
    let input = method.input();
    let output = method.output();

    let path_fields = template
        .variables()
        .iter()
        .map(|var| resolve_path_variable(method, &input, var.field_path()))
        .collect::<Result<Vec<_>, _>>()?;

    let body = match rule.body.as_str() {
        "" => BodyRule::None,
        "*" => BodyRule::All,
        name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
            invalid(
                method,
                format!(
                    "body field {name:?} does not exist in {}; use a top-level field name or \"*\"",
                    input.full_name()
                ),
            )
        })?),
    };
    let response_body = match rule.response_body.as_str() {
        "" => None,
        name => Some(output.get_field_by_name(name).ok_or_else(|| {
            invalid(
                method,
                format!(
                    "response_body field {name:?} does not exist in {}; use a top-level field name",
                    output.full_name()
                ),
            )
        })?),
    };

    Ok(Route {
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
        method: method.clone(),
        http_method,
        template,
        body,
        response_body,
        path_fields,
        binding,
    })
}

/// Resolves `a.b.c` against the request type: every step but the last must
/// be a singular message field, the last a singular scalar (or enum) field,
/// since a path segment can only carry one scalar value.
fn resolve_path_variable(
    method: &MethodDescriptor,
    input: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, GatewayError> {
    let dotted = path.join(".");
    let mut chain = Vec::with_capacity(path.len());
    let mut message = input.clone();
    for (i, name) in path.iter().enumerate() {
        let field = message.get_field_by_name(name).ok_or_else(|| {
            invalid(
                method,
                format!(
                    "path variable {dotted:?}: {} has no field {name:?}",
                    message.full_name()
                ),
            )
        })?;
        if field.is_list() || field.is_map() {
            return Err(invalid(
                method,
                format!(
                    "path variable {dotted:?}: field {name:?} is repeated; bind a singular scalar field"
                ),
            ));
        }
        let last = i + 1 == path.len();
        match (field.kind(), last) {
            (Kind::Message(next), false) => message = next,
            (Kind::Message(_), true) => {
                return Err(invalid(
                    method,
                    format!(
                        "path variable {dotted:?} is bound to a message field; bind one of its scalar fields instead"
                    ),
                ));
            }
            (_, false) => {
                return Err(invalid(
                    method,
                    format!(
                        "path variable {dotted:?}: field {name:?} is not a message, so it has no sub-fields"
                    ),
                ));
            }
            (_, true) => {}
        }
        chain.push(field);
    }
    Ok(chain)
}

/// Test fixture shared by the gateway's unit tests: builds a descriptor
/// pool by hand (google/api/http.proto, annotations.proto and a small
/// service) with real `google.api.http` extension bytes in the method
/// options, so the tests need no build script.
#[cfg(test)]
pub(crate) mod fixture {
    use prost::Message;
    use prost_reflect::DescriptorPool;
    use prost_types::{
        DescriptorProto, EnumDescriptorProto, EnumValueDescriptorProto, FieldDescriptorProto,
        FileDescriptorProto, MessageOptions, OneofDescriptorProto,
        field_descriptor_proto::{Label, Type},
    };

    pub(crate) use super::{CustomHttpPattern, HttpRule, Pattern};

    pub(crate) const PACKAGE: &str = "fixture.v1";
    pub(crate) const SERVICE: &str = "fixture.v1.ItemService";

    #[derive(Clone, PartialEq, Message)]
    struct TestFile {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        package: String,
        #[prost(string, repeated, tag = "3")]
        dependency: Vec<String>,
        #[prost(message, repeated, tag = "4")]
        message_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "5")]
        enum_type: Vec<EnumDescriptorProto>,
        #[prost(message, repeated, tag = "6")]
        service: Vec<TestService>,
        #[prost(string, tag = "12")]
        syntax: String,
    }

    #[derive(Clone, PartialEq, Message)]
    struct TestService {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        method: Vec<TestMethod>,
    }

    #[derive(Clone, PartialEq, Message)]
    struct TestMethod {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        input_type: String,
        #[prost(string, tag = "3")]
        output_type: String,
        #[prost(message, optional, tag = "4")]
        options: Option<TestMethodOptions>,
        #[prost(bool, tag = "5")]
        client_streaming: bool,
        #[prost(bool, tag = "6")]
        server_streaming: bool,
    }

    /// `google.protobuf.MethodOptions` carrying only the extension.
    #[derive(Clone, PartialEq, Message)]
    struct TestMethodOptions {
        #[prost(message, optional, tag = "72295728")]
        http: Option<HttpRule>,
    }

    /// A method of the fixture service.
    pub(crate) struct M {
        pub name: &'static str,
        pub input: &'static str,
        pub output: &'static str,
        pub rule: Option<HttpRule>,
        pub client_streaming: bool,
        pub server_streaming: bool,
    }

    pub(crate) fn method(name: &'static str, input: &'static str, output: &'static str) -> M {
        M {
            name,
            input,
            output,
            rule: None,
            client_streaming: false,
            server_streaming: false,
        }
    }

    impl M {
        pub(crate) fn rule(mut self, rule: HttpRule) -> M {
            self.rule = Some(rule);
            self
        }
        pub(crate) fn server_streaming(mut self) -> M {
            self.server_streaming = true;
            self
        }
        pub(crate) fn client_streaming(mut self) -> M {
            self.client_streaming = true;
            self
        }
    }

    pub(crate) fn get(path: &str) -> HttpRule {
        rule(Pattern::Get(path.into()))
    }
    pub(crate) fn post(path: &str, body: &str) -> HttpRule {
        HttpRule {
            body: body.into(),
            ..rule(Pattern::Post(path.into()))
        }
    }
    pub(crate) fn custom(kind: &str, path: &str) -> HttpRule {
        rule(Pattern::Custom(CustomHttpPattern {
            kind: kind.into(),
            path: path.into(),
        }))
    }
    pub(crate) fn rule(pattern: Pattern) -> HttpRule {
        HttpRule {
            pattern: Some(pattern),
            ..HttpRule::default()
        }
    }

    fn field(name: &str, number: i32, ty: Type, type_name: Option<&str>) -> FieldDescriptorProto {
        FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(ty as i32),
            type_name: type_name.map(Into::into),
            ..Default::default()
        }
    }

    fn repeated(mut f: FieldDescriptorProto) -> FieldDescriptorProto {
        f.label = Some(Label::Repeated as i32);
        f
    }

    fn in_oneof(mut f: FieldDescriptorProto, index: i32) -> FieldDescriptorProto {
        f.oneof_index = Some(index);
        f
    }

    fn message(name: &str, fields: Vec<FieldDescriptorProto>) -> DescriptorProto {
        DescriptorProto {
            name: Some(name.into()),
            field: fields,
            ..Default::default()
        }
    }

    fn http_proto() -> FileDescriptorProto {
        use Type::*;
        let mut rule = message(
            "HttpRule",
            vec![
                field("selector", 1, String, None),
                in_oneof(field("get", 2, String, None), 0),
                in_oneof(field("put", 3, String, None), 0),
                in_oneof(field("post", 4, String, None), 0),
                in_oneof(field("delete", 5, String, None), 0),
                in_oneof(field("patch", 6, String, None), 0),
                in_oneof(
                    field("custom", 8, Message, Some(".google.api.CustomHttpPattern")),
                    0,
                ),
                field("body", 7, String, None),
                field("response_body", 12, String, None),
                repeated(field(
                    "additional_bindings",
                    11,
                    Message,
                    Some(".google.api.HttpRule"),
                )),
            ],
        );
        rule.oneof_decl = vec![OneofDescriptorProto {
            name: Some("pattern".into()),
            options: None,
        }];
        FileDescriptorProto {
            name: Some("google/api/http.proto".into()),
            package: Some("google.api".into()),
            message_type: vec![
                rule,
                message(
                    "CustomHttpPattern",
                    vec![
                        field("kind", 1, String, None),
                        field("path", 2, String, None),
                    ],
                ),
            ],
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    }

    fn annotations_proto() -> FileDescriptorProto {
        let mut ext = field(
            "http",
            72295728,
            Type::Message,
            Some(".google.api.HttpRule"),
        );
        ext.extendee = Some(".google.protobuf.MethodOptions".into());
        FileDescriptorProto {
            name: Some("google/api/annotations.proto".into()),
            package: Some("google.api".into()),
            dependency: vec![
                "google/api/http.proto".into(),
                "google/protobuf/descriptor.proto".into(),
            ],
            extension: vec![ext],
            syntax: Some("proto3".into()),
            ..Default::default()
        }
    }

    fn messages() -> (Vec<DescriptorProto>, Vec<EnumDescriptorProto>) {
        use Type::*;
        let mut item = message(
            "Item",
            vec![
                field("name", 1, String, None),
                field("count", 2, Int32, None),
                field("flag", 3, Bool, None),
                field("color", 4, Enum, Some(".fixture.v1.Color")),
                field("blob", 5, Bytes, None),
                field("ratio", 6, Double, None),
                field("big", 7, Int64, None),
                field("ubig", 8, Uint64, None),
                field("small", 9, Float, None),
                field("small_u", 10, Uint32, None),
                field("inner", 11, Message, Some(".fixture.v1.Inner")),
                repeated(field("tags", 12, String, None)),
                repeated(field("ids", 13, Int64, None)),
                repeated(field(
                    "labels",
                    14,
                    Message,
                    Some(".fixture.v1.Item.LabelsEntry"),
                )),
                field("at", 15, Message, Some(".google.protobuf.Timestamp")),
                field("limit", 16, Message, Some(".google.protobuf.Int32Value")),
                in_oneof(field("text", 17, String, None), 0),
                in_oneof(field("number", 18, Int32, None), 0),
                repeated(field("children", 19, Message, Some(".fixture.v1.Inner"))),
            ],
        );
        item.oneof_decl = vec![OneofDescriptorProto {
            name: Some("choice".into()),
            options: None,
        }];
        let mut entry = message(
            "LabelsEntry",
            vec![
                field("key", 1, String, None),
                field("value", 2, String, None),
            ],
        );
        entry.options = Some(MessageOptions {
            map_entry: Some(true),
            ..Default::default()
        });
        item.nested_type = vec![entry];
        let messages = vec![
            item,
            message(
                "Inner",
                vec![
                    field("label", 1, String, None),
                    field("depth", 2, Int32, None),
                    field("child", 3, Message, Some(".fixture.v1.Inner")),
                ],
            ),
            message("Chunk", vec![field("data", 1, Bytes, None)]),
            message("Empty", vec![]),
        ];
        let color = EnumDescriptorProto {
            name: Some("Color".into()),
            value: ["COLOR_UNSPECIFIED", "COLOR_RED", "COLOR_BLUE"]
                .iter()
                .enumerate()
                .map(|(i, name)| EnumValueDescriptorProto {
                    name: Some((*name).into()),
                    number: Some(i as i32),
                    options: None,
                })
                .collect(),
            ..Default::default()
        };
        (messages, vec![color])
    }

    /// A pool with the fixture messages and one service,
    /// `fixture.v1.ItemService`, made of `methods`. Message names in `M`
    /// are short (`Item`, `Inner`, `Chunk`, `Empty`).
    pub(crate) fn pool(methods: Vec<M>) -> DescriptorPool {
        let mut pool = DescriptorPool::global();
        pool.add_file_descriptor_protos([http_proto(), annotations_proto()])
            .expect("google/api protos");
        let (message_type, enum_type) = messages();
        let file = TestFile {
            name: "fixture/v1/items.proto".into(),
            package: PACKAGE.into(),
            dependency: vec![
                "google/api/annotations.proto".into(),
                "google/protobuf/timestamp.proto".into(),
                "google/protobuf/wrappers.proto".into(),
            ],
            message_type,
            enum_type,
            service: vec![TestService {
                name: "ItemService".into(),
                method: methods
                    .into_iter()
                    .map(|m| TestMethod {
                        name: m.name.into(),
                        input_type: format!(".{PACKAGE}.{}", m.input),
                        output_type: format!(".{PACKAGE}.{}", m.output),
                        options: m.rule.map(|rule| TestMethodOptions { http: Some(rule) }),
                        client_streaming: m.client_streaming,
                        server_streaming: m.server_streaming,
                    })
                    .collect(),
            }],
            syntax: "proto3".into(),
        };
        pool.decode_file_descriptor_proto(file.encode_to_vec().as_slice())
            .expect("fixture proto");
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::*, *};

    fn table(methods: Vec<M>) -> Result<RouteTable, GatewayError> {
        RouteTable::from_pool(&pool(methods))
    }

    fn err(methods: Vec<M>) -> String {
        table(methods)
            .expect_err("expected a start-up error")
            .to_string()
    }

    fn found(table: &RouteTable, method: http::Method, path: &str) -> Option<String> {
        match table.find(&method, path) {
            Lookup::Found(route, _) => Some(route.method().name().to_owned()),
            _ => None,
        }
    }

    #[test]
    fn reads_rules_and_additional_bindings() {
        let mut rule = get("/v1/items/{name}");
        rule.additional_bindings = vec![
            get("/v1/shelves/{inner.label}/items/{name}"),
            post("/v1/items/{name}:touch", "*"),
        ];
        let table = table(vec![
            method("GetItem", "Item", "Item").rule(rule),
            method("Plain", "Item", "Item"),
        ])
        .unwrap();
        let routes: Vec<_> = table.iter().collect();
        assert_eq!(routes.len(), 3);
        assert_eq!(routes[0].template_text(), "/v1/items/{name}");
        assert_eq!(
            routes[0].http_method(),
            &RouteMethod::Exact(http::Method::GET)
        );
        assert_eq!(routes[0].grpc_path(), "/fixture.v1.ItemService/GetItem");
        assert_eq!(routes[0].service_name(), SERVICE);
        assert_eq!(routes[0].input().full_name(), "fixture.v1.Item");
        assert_eq!(routes[0].output().full_name(), "fixture.v1.Item");
        assert_eq!(routes[0].body(), &BodyRule::None);
        assert_eq!(routes[1].binding_index(), 1);
        let vars: Vec<_> = routes[1].path_variables().map(|(v, _)| v).collect();
        assert_eq!(vars, ["inner.label", "name"]);
        assert_eq!(routes[2].body(), &BodyRule::All);
        assert_eq!(
            routes[2].http_method(),
            &RouteMethod::Exact(http::Method::POST)
        );
    }

    #[test]
    fn resolves_body_and_response_body_fields() {
        let mut rule = post("/v1/items", "inner");
        rule.response_body = "inner".into();
        let table = table(vec![method("Create", "Item", "Item").rule(rule)]).unwrap();
        let route = table.iter().next().unwrap();
        match route.body() {
            BodyRule::Field(f) => assert_eq!(f.name(), "inner"),
            other => panic!("unexpected body rule {other:?}"),
        }
        assert_eq!(route.response_body().map(|f| f.name()), Some("inner"));
        assert!(!route.streams_raw_bytes());
    }

    #[test]
    fn skips_client_streaming_methods() {
        let table = table(vec![
            method("Upload", "Chunk", "Empty")
                .rule(post("/v1/upload", "*"))
                .client_streaming(),
            method("Chat", "Chunk", "Chunk")
                .rule(post("/v1/chat", "*"))
                .client_streaming()
                .server_streaming(),
            method("Download", "Item", "Chunk")
                .rule(HttpRule {
                    response_body: "data".into(),
                    ..get("/v1/download/{name}")
                })
                .server_streaming(),
        ])
        .unwrap();
        assert_eq!(table.len(), 1);
        let route = table.iter().next().unwrap();
        assert!(route.is_server_streaming());
        assert!(route.streams_raw_bytes());
    }

    #[test]
    fn pool_without_annotations_has_no_routes() {
        let table = RouteTable::from_pool(&DescriptorPool::global()).unwrap();
        assert!(table.is_empty());
    }

    #[test]
    fn rejects_bad_rules_with_helpful_errors() {
        let e = err(vec![method("A", "Item", "Item").rule(get("/v1/{name"))]);
        assert!(
            e.contains("fixture.v1.ItemService.A") && e.contains("invalid path template"),
            "{e}"
        );

        let e = err(vec![method("A", "Item", "Item").rule(get("/v1/{nope}"))]);
        assert!(e.contains("has no field \"nope\""), "{e}");

        let e = err(vec![method("A", "Item", "Item").rule(get("/v1/{inner}"))]);
        assert!(e.contains("bound to a message field"), "{e}");

        let e = err(vec![method("A", "Item", "Item").rule(get("/v1/{tags}"))]);
        assert!(e.contains("is repeated"), "{e}");

        let e = err(vec![method("A", "Item", "Item").rule(get("/v1/{name.x}"))]);
        assert!(e.contains("has no sub-fields"), "{e}");

        let e = err(vec![
            method("A", "Item", "Item").rule(get("/v1/{inner.nope}")),
        ]);
        assert!(e.contains("fixture.v1.Inner has no field \"nope\""), "{e}");

        let e = err(vec![
            method("A", "Item", "Item").rule(post("/v1/a", "nope")),
        ]);
        assert!(e.contains("body field \"nope\""), "{e}");

        let e = err(vec![method("A", "Item", "Item").rule(HttpRule {
            response_body: "nope".into(),
            ..get("/v1/a")
        })]);
        assert!(e.contains("response_body field \"nope\""), "{e}");

        let e = err(vec![method("A", "Item", "Item").rule(HttpRule::default())]);
        assert!(e.contains("has no pattern"), "{e}");

        let e = err(vec![
            method("A", "Item", "Item").rule(custom("BAD METHOD", "/v1/a")),
        ]);
        assert!(e.contains("not a valid http method"), "{e}");

        let mut nested = get("/v1/a");
        nested.additional_bindings = vec![HttpRule {
            additional_bindings: vec![get("/v1/c")],
            ..get("/v1/b")
        }];
        let e = err(vec![method("A", "Item", "Item").rule(nested)]);
        assert!(e.contains("must not contain additional_bindings"), "{e}");
    }

    #[test]
    fn rejects_colliding_rules() {
        let e = err(vec![
            method("A", "Item", "Item").rule(get("/v1/items/{name}")),
            method("B", "Item", "Item").rule(get("/v1/items/{inner.label}")),
        ]);
        assert!(
            e.contains("collide") && e.contains(".A") && e.contains(".B"),
            "{e}"
        );

        // Same path, different methods or verbs: fine.
        table(vec![
            method("A", "Item", "Item").rule(get("/v1/items/{name}")),
            method("B", "Item", "Item").rule(post("/v1/items/{name}", "*")),
            method("C", "Item", "Item").rule(post("/v1/items/{name}:go", "*")),
        ])
        .unwrap();
    }

    #[test]
    fn prefers_literals_and_reports_allowed_methods() {
        let table = table(vec![
            method("ByName", "Item", "Item").rule(get("/v1/{name=items/*}")),
            method("Me", "Item", "Item").rule(get("/v1/items/me")),
            method("Deep", "Item", "Item").rule(get("/v1/{name=**}")),
            method("Accept", "Item", "Item").rule(post("/v1/items/{name}:accept", "*")),
            method("Delete", "Item", "Item")
                .rule(rule(Pattern::Delete("/v1/{name=items/*}".into()))),
            method("Anything", "Item", "Item").rule(custom("*", "/v2/{name=**}")),
            method("Head", "Item", "Item").rule(custom("HEAD", "/v2/items/{name}")),
        ])
        .unwrap();
        use http::Method;
        assert_eq!(
            found(&table, Method::GET, "/v1/items/me").as_deref(),
            Some("Me")
        );
        assert_eq!(
            found(&table, Method::GET, "/v1/items/x").as_deref(),
            Some("ByName")
        );
        assert_eq!(
            found(&table, Method::GET, "/v1/other/x").as_deref(),
            Some("Deep")
        );
        assert_eq!(
            found(&table, Method::DELETE, "/v1/items/x").as_deref(),
            Some("Delete")
        );
        assert_eq!(
            found(&table, Method::POST, "/v1/items/x:accept").as_deref(),
            Some("Accept")
        );
        assert_eq!(
            found(&table, Method::HEAD, "/v2/items/x").as_deref(),
            Some("Head")
        );
        assert_eq!(
            found(&table, Method::PUT, "/v2/items/x").as_deref(),
            Some("Anything")
        );
        assert!(matches!(table.find(&Method::GET, "/v3"), Lookup::NotFound));
        match table.find(&Method::PUT, "/v1/items/x") {
            Lookup::MethodNotAllowed(allowed) => {
                assert_eq!(allowed, [Method::GET, Method::DELETE]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
