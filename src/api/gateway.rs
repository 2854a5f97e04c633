// TEMPORARY stub until the gateway lands.
use axum::body::Body;
use std::collections::HashMap;
pub struct BodyLimits {
    pub default: usize,
    pub per_service: HashMap<String, usize>,
}
#[derive(Clone)]
pub struct Gateway;
impl Gateway {
    pub fn new(
        _p: &prost_reflect::DescriptorPool,
        _r: axum::Router,
        _l: BodyLimits,
    ) -> anyhow::Result<axum::Router> {
        Ok(axum::Router::new())
    }
}
pub fn http_status_from_code(_c: tonic::Code) -> http::StatusCode {
    http::StatusCode::UNAUTHORIZED
}
pub fn error_response(s: http::StatusCode, _c: tonic::Code, m: &str) -> http::Response<Body> {
    let mut r = http::Response::new(Body::from(m.to_owned()));
    *r.status_mut() = s;
    r
}
