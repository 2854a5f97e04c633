//! `google.api.http` path templates: parsing and matching.
//!
//! Grammar (from `google/api/http.proto`):
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! Matching works on the raw (still percent-encoded) request path so that an
//! encoded `/` (`%2F`) inside a value can never split a segment; captured
//! values are decoded afterwards by [`decode_capture`].

use std::cmp::Ordering;

/// One compiled segment of a template.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// Matches exactly this (raw, case-sensitive) text.
    Literal(String),
    /// `*`: matches one non-empty segment.
    Wildcard,
    /// `**`: matches zero or more segments; only ever the last segment.
    DeepWildcard,
}

impl Segment {
    /// Lower ranks are more specific; used to order overlapping templates.
    fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 0,
            Segment::Wildcard => 1,
            Segment::DeepWildcard => 2,
        }
    }
}

/// A `{field.path=...}` variable: which field it binds and which template
/// segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    field_path: Vec<String>,
    start: usize,
    end: usize,
}

impl Variable {
    /// The field path as written, split on `.`.
    pub fn field_path(&self) -> &[String] {
        &self.field_path
    }

    /// The dotted field path, e.g. `user.name`.
    pub fn dotted(&self) -> String {
        self.field_path.join(".")
    }
}

/// A parsed path template.
#[derive(Debug, Clone)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
    verb: Option<String>,
    variables: Vec<Variable>,
}

/// Why a template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path template {template:?}: {reason} (at byte {offset})")]
pub struct TemplateError {
    /// The template text.
    pub template: String,
    /// Byte offset of the problem.
    pub offset: usize,
    /// What is wrong, in lowercase.
    pub reason: String,
}

/// A captured, still percent-encoded variable value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// Index into [`Template::variables`].
    pub variable: usize,
    /// Raw text of the spanned segments joined with `/`.
    pub raw: String,
    /// Whether the variable spans more than one segment (or `**`), which
    /// changes how `%2F` is decoded.
    pub multi_segment: bool,
}

/// A captured value was not UTF-8 after percent-decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path segment {raw:?} is not valid utf-8 after percent-decoding")]
pub struct DecodeError {
    /// The raw captured text.
    pub raw: String,
}

impl Template {
    /// Parses `text` according to the grammar in the module docs.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Parser {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            segments: Vec::new(),
            variables: Vec::new(),
        }
        .parse()
    }

    /// The template exactly as written in the proto.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The compiled segments (variables are expanded into their segments).
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The `:verb` suffix, without the colon.
    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// The variables in order of appearance.
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// A key that is equal for two templates exactly when they match the
    /// same set of paths; used to reject colliding rules at start-up.
    pub fn shape(&self) -> (Vec<Segment>, Option<String>) {
        (self.segments.clone(), self.verb.clone())
    }

    /// Orders templates from most to least specific: literals beat `*`,
    /// which beats `**`, compared segment by segment; a verb beats no verb.
    /// Matching tries templates in this order so the result never depends
    /// on declaration order.
    pub fn specificity_cmp(&self, other: &Template) -> Ordering {
        let a = self.segments.iter().map(Segment::rank);
        let b = other.segments.iter().map(Segment::rank);
        a.cmp(b)
            .then_with(|| other.verb.is_some().cmp(&self.verb.is_some()))
    }

    /// Matches a raw request path (`Uri::path()`, still percent-encoded).
    /// Returns the captured variables, or `None` when the path does not
    /// match.
    pub fn match_path(&self, path: &str) -> Option<Vec<Capture>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            // The verb lives in the last segment, after a literal `:`; an
            // encoded colon (`%3A`) is data, not a verb separator.
            let without = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
            if without.is_empty() && !self.segments.is_empty() {
                return None;
            }
            rest = without;
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let deep = matches!(self.segments.last(), Some(Segment::DeepWildcard));
        let fixed = if deep {
            self.segments.len() - 1
        } else {
            self.segments.len()
        };
        if parts.len() < fixed || (!deep && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments[..fixed].iter().zip(&parts) {
            match segment {
                Segment::Literal(lit) if lit != part => return None,
                Segment::Wildcard if part.is_empty() => return None,
                _ => {}
            }
        }
        let captures = self
            .variables
            .iter()
            .enumerate()
            .map(|(index, var)| {
                let spans_deep = deep && var.end == self.segments.len();
                let end = if spans_deep { parts.len() } else { var.end };
                Capture {
                    variable: index,
                    raw: parts[var.start..end].join("/"),
                    multi_segment: spans_deep || var.end - var.start > 1,
                }
            })
            .collect();
        Some(captures)
    }
}

impl std::fmt::Display for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Percent-decodes a captured value. Single-segment values decode
/// everything, including `%2F`; multi-segment values keep `%2F` encoded so
/// that an encoded slash stays distinguishable from a segment separator.
pub fn decode_capture(capture: &Capture) -> Result<String, DecodeError> {
    let raw = capture.raw.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%'
            && i + 2 < raw.len()
            && let (Some(h), Some(l)) = (hex(raw[i + 1]), hex(raw[i + 2]))
        {
            let byte = h << 4 | l;
            if byte == b'/' && capture.multi_segment {
                out.extend_from_slice(&raw[i..i + 3]);
            } else {
                out.push(byte);
            }
            i += 3;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| DecodeError {
        raw: capture.raw.clone(),
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Characters allowed in a literal: RFC 3986 unreserved characters, the
/// sub-delimiters that have no meaning in the grammar, `@` and `%` (so a
/// literal may carry its own percent-encoding, compared raw).
fn is_literal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'+'
                | b','
                | b';'
                | b'@'
                | b'%'
        )
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
}

impl Parser<'_> {
    fn error(&self, reason: impl Into<String>) -> TemplateError {
        TemplateError {
            template: self.text.to_owned(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn parse(mut self) -> Result<Template, TemplateError> {
        if !self.eat(b'/') {
            return Err(self.error("a template must start with \"/\""));
        }
        self.parse_segments(false)?;
        let verb = if self.eat(b':') {
            let literal = self.parse_literal()?;
            Some(literal)
        } else {
            None
        };
        if let Some(b) = self.peek() {
            return Err(self.error(format!("unexpected character {:?}", char::from(b))));
        }
        // `**` swallows the rest of the path, so nothing may follow it.
        if let Some(index) = self
            .segments
            .iter()
            .position(|s| *s == Segment::DeepWildcard)
            && index + 1 != self.segments.len()
        {
            return Err(TemplateError {
                template: self.text.to_owned(),
                offset: 0,
                reason: "\"**\" may only be the last segment".into(),
            });
        }
        for (i, var) in self.variables.iter().enumerate() {
            if self.variables[..i]
                .iter()
                .any(|other| other.field_path == var.field_path)
            {
                return Err(TemplateError {
                    template: self.text.to_owned(),
                    offset: 0,
                    reason: format!("field {:?} is bound more than once", var.dotted()),
                });
            }
        }
        Ok(Template {
            text: self.text.to_owned(),
            segments: self.segments,
            verb,
            variables: self.variables,
        })
    }

    fn parse_segments(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        loop {
            self.parse_segment(in_variable)?;
            if !self.eat(b'/') {
                return Ok(());
            }
        }
    }

    fn parse_segment(&mut self, in_variable: bool) -> Result<(), TemplateError> {
        match self.peek() {
            Some(b'*') => {
                self.pos += 1;
                if self.eat(b'*') {
                    self.segments.push(Segment::DeepWildcard);
                } else {
                    self.segments.push(Segment::Wildcard);
                }
                Ok(())
            }
            Some(b'{') if in_variable => Err(self.error("variables cannot be nested")),
            Some(b'{') => {
                self.pos += 1;
                self.parse_variable()
            }
            Some(b) if is_literal_byte(b) => {
                let literal = self.parse_literal()?;
                self.segments.push(Segment::Literal(literal));
                Ok(())
            }
            Some(b'/') | Some(b'}') | Some(b':') | None => {
                Err(self.error("empty segment; use a literal, \"*\", \"**\" or a {variable}"))
            }
            Some(b) => Err(self.error(format!(
                "character {:?} is not allowed in a path template",
                char::from(b)
            ))),
        }
    }

    fn parse_literal(&mut self) -> Result<String, TemplateError> {
        let start = self.pos;
        while self.peek().is_some_and(is_literal_byte) {
            self.pos += 1;
        }
        if start == self.pos {
            return Err(self.error("expected a literal"));
        }
        Ok(self.text[start..self.pos].to_owned())
    }

    fn parse_variable(&mut self) -> Result<(), TemplateError> {
        let mut field_path = Vec::new();
        loop {
            let start = self.pos;
            if self
                .peek()
                .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            {
                self.pos += 1;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    self.pos += 1;
                }
            } else {
                return Err(self.error("expected a field name"));
            }
            field_path.push(self.text[start..self.pos].to_owned());
            if !self.eat(b'.') {
                break;
            }
        }
        let start = self.segments.len();
        if self.eat(b'=') {
            self.parse_segments(true)?;
        } else {
            self.segments.push(Segment::Wildcard);
        }
        if !self.eat(b'}') {
            return Err(self.error("expected \"}\" to close the variable"));
        }
        self.variables.push(Variable {
            field_path,
            start,
            end: self.segments.len(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> Template {
        Template::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn caps(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        let tpl = t(template);
        tpl.match_path(path).map(|caps| {
            caps.iter()
                .map(|c| {
                    (
                        tpl.variables()[c.variable].dotted(),
                        decode_capture(c).unwrap(),
                    )
                })
                .collect()
        })
    }

    fn pairs(list: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn parses_literals_wildcards_and_variables() {
        let tpl = t("/v1/{name=users/*}/messages/{message_id}:publish");
        assert_eq!(
            tpl.segments(),
            &[
                Segment::Literal("v1".into()),
                Segment::Literal("users".into()),
                Segment::Wildcard,
                Segment::Literal("messages".into()),
                Segment::Wildcard,
            ]
        );
        assert_eq!(tpl.verb(), Some("publish"));
        assert_eq!(tpl.variables().len(), 2);
        assert_eq!(tpl.variables()[0].dotted(), "name");
        assert_eq!(tpl.variables()[1].dotted(), "message_id");
        assert_eq!(
            tpl.as_str(),
            "/v1/{name=users/*}/messages/{message_id}:publish"
        );

        let tpl = t("/v1/{a.b.c}/**");
        assert_eq!(tpl.variables()[0].field_path(), &["a", "b", "c"]);
        assert_eq!(tpl.segments().last(), Some(&Segment::DeepWildcard));
    }

    #[test]
    fn rejects_invalid_templates() {
        for bad in [
            "",
            "v1/users",
            "/",
            "/v1/",
            "/v1//users",
            "/v1/{",
            "/v1/{name",
            "/v1/{name=}",
            "/v1/{name=users/{id}}",
            "/v1/{1name}",
            "/v1/{na-me}",
            "/v1/**/users",
            "/v1/{a=**}/b",
            "/v1/{a}/{a}",
            "/v1/users:",
            "/v1/users:a:b",
            "/v1/users:{verb}",
            "/v1/us ers",
            "/v1/usérs",
            "/v1/users?x=1",
            "/v1/}",
            "/v1/***",
        ] {
            let err = Template::parse(bad).expect_err(bad);
            assert!(
                err.to_string().starts_with("invalid path template"),
                "{err}"
            );
        }
    }

    #[test]
    fn matches_simple_variables() {
        assert_eq!(
            caps("/v1/users/{id}", "/v1/users/42"),
            pairs(&[("id", "42")])
        );
        assert_eq!(caps("/v1/users/{id}", "/v1/users"), None);
        assert_eq!(caps("/v1/users/{id}", "/v1/users/"), None);
        assert_eq!(caps("/v1/users/{id}", "/v1/users/42/x"), None);
        assert_eq!(caps("/v1/users/{id}", "v1/users/42"), None);
        assert_eq!(caps("/v1/users", "/v1/users"), pairs(&[]));
        assert_eq!(caps("/v1/users", "/v1/Users"), None);
    }

    #[test]
    fn matches_multi_segment_variables() {
        assert_eq!(
            caps("/v1/{name=users/*}", "/v1/users/abc"),
            pairs(&[("name", "users/abc")])
        );
        assert_eq!(caps("/v1/{name=users/*}", "/v1/groups/abc"), None);
        assert_eq!(
            caps("/v1/files/{path=**}", "/v1/files/a/b/c.txt"),
            pairs(&[("path", "a/b/c.txt")])
        );
        assert_eq!(
            caps("/v1/files/{path=**}", "/v1/files"),
            pairs(&[("path", "")])
        );
        assert_eq!(
            caps("/v1/{name=shelves/*/books/**}", "/v1/shelves/s1/books/b/c"),
            pairs(&[("name", "shelves/s1/books/b/c")])
        );
        assert_eq!(caps("/v1/**", "/v1/anything/at/all"), pairs(&[]));
    }

    #[test]
    fn matches_verbs() {
        assert_eq!(
            caps("/v1/exchanges/{token}:accept", "/v1/exchanges/abc:accept"),
            pairs(&[("token", "abc")])
        );
        assert_eq!(
            caps("/v1/exchanges/{token}:accept", "/v1/exchanges/abc"),
            None
        );
        assert_eq!(
            caps("/v1/exchanges/{token}:accept", "/v1/exchanges/abc:reject"),
            None
        );
        // An encoded colon is data, not a verb separator.
        assert_eq!(
            caps("/v1/exchanges/{token}:accept", "/v1/exchanges/abc%3Aaccept"),
            None
        );
        assert_eq!(
            caps("/v1/exchanges/{token}", "/v1/exchanges/abc:accept"),
            pairs(&[("token", "abc:accept")])
        );
        assert_eq!(
            caps("/v1/{path=**}:download", "/v1/a/b:download"),
            pairs(&[("path", "a/b")])
        );
        assert_eq!(caps("/v1/x:go", "/v1/x:go"), pairs(&[]));
    }

    #[test]
    fn decodes_single_segment_fully_and_multi_segment_except_slash() {
        assert_eq!(
            caps("/v1/users/{id}", "/v1/users/a%2Fb%20c%C3%A9"),
            pairs(&[("id", "a/b cé")])
        );
        assert_eq!(
            caps("/v1/files/{path=**}", "/v1/files/a%2Fb/c%20d"),
            pairs(&[("path", "a%2Fb/c d")])
        );
        assert_eq!(
            caps("/v1/{name=users/*}", "/v1/users/a%2fb"),
            pairs(&[("name", "users/a%2fb")])
        );
        // Malformed escapes are kept as they are.
        assert_eq!(
            caps("/v1/users/{id}", "/v1/users/100%25%zz%"),
            pairs(&[("id", "100%%zz%")])
        );
        let tpl = t("/v1/users/{id}");
        let capture = &tpl.match_path("/v1/users/%FF").unwrap()[0];
        assert!(decode_capture(capture).is_err());
    }

    #[test]
    fn orders_templates_by_specificity() {
        let mut templates = [
            t("/v1/{name=**}"),
            t("/v1/{name=users/*}"),
            t("/v1/users/me"),
            t("/v1/users/{id}:accept"),
            t("/v1/*/me"),
        ];
        templates.sort_by(|a, b| a.specificity_cmp(b));
        let order: Vec<&str> = templates.iter().map(Template::as_str).collect();
        assert_eq!(
            order,
            [
                "/v1/users/me",
                "/v1/users/{id}:accept",
                "/v1/{name=users/*}",
                "/v1/*/me",
                "/v1/{name=**}",
            ]
        );
    }

    #[test]
    fn shape_ignores_variable_names() {
        assert_eq!(t("/v1/{a}").shape(), t("/v1/{b}").shape());
        assert_eq!(t("/v1/{a=**}").shape(), t("/v1/**").shape());
        assert_ne!(t("/v1/{a}").shape(), t("/v1/{a}:x").shape());
        assert_ne!(t("/v1/{a}").shape(), t("/v2/{a}").shape());
    }

    /// Small deterministic generator so the fuzz test needs no extra crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn string(&mut self, alphabet: &[&str], max_len: usize) -> String {
            let len = (self.next() % (max_len as u64 + 1)) as usize;
            (0..len)
                .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
                .collect()
        }
    }

    #[test]
    fn fuzz_parse_and_match_never_panic() {
        let alphabet = [
            "/", "/", "*", "**", "{", "}", "=", ":", ".", "a", "b", "v1", "%", "%2F", "%2f", "%FF",
            "%C3", "é", "-", "_", "~", " ", "?", "#", "x.y", "\u{0}",
        ];
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let templates = [
            t("/v1/{name=users/*}"),
            t("/v1/files/{path=**}"),
            t("/v1/{a}/{b.c}:verb"),
            t("/**"),
            t("/v1/{x=a/**}:go"),
        ];
        for _ in 0..5000 {
            let text = rng.string(&alphabet, 16);
            if let Ok(tpl) = Template::parse(&text) {
                // Whatever parses must round-trip its own text.
                assert_eq!(tpl.as_str(), text);
                let _ = tpl.match_path(&text);
            }
            let path = rng.string(&alphabet, 16);
            for tpl in &templates {
                if let Some(captures) = tpl.match_path(&path) {
                    for capture in &captures {
                        let _ = decode_capture(capture);
                    }
                }
            }
        }
    }
}
