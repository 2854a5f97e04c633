//! Requests in the three protocols: gRPC with pre-encoded messages, gRPC-web
//! and the JSON gateway, one call at a time over a connection.

use bytes::{Buf, BufMut, Bytes};
use http::{HeaderMap, HeaderValue, Method, Uri, header};
use piqchat_inbox::{
    client::{HttpClient, HttpReply, RequestSigner, grpc_frame},
    pb,
};
use prost::Message as _;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
};

use crate::Protocol;

/// Passes already-encoded protobuf messages through tonic untouched, so the
/// generator encodes each distinct request once, before the timed phase.
#[derive(Clone, Copy, Default)]
pub(crate) struct RawCodec;

pub(crate) struct RawEncoder;
pub(crate) struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

pub(crate) const INFO_GET: &str = "/piqchat.inbox.v1.InfoService/GetInfo";
pub(crate) const PARCELS_LIST: &str = "/piqchat.inbox.v1.ParcelService/ListParcels";
pub(crate) const PARCELS_SEND: &str = "/piqchat.inbox.v1.ParcelService/SendParcel";
pub(crate) const PARCELS_DOWNLOAD: &str = "/piqchat.inbox.v1.ParcelService/DownloadAttachment";
pub(crate) const EXCHANGES_CREATE: &str = "/piqchat.inbox.v1.ExchangeService/CreateExchange";
pub(crate) const EXCHANGES_ACCEPT: &str = "/piqchat.inbox.v1.ExchangeService/AcceptExchange";

/// One RPC, spelled for each protocol, encoded once.
#[derive(Clone)]
pub(crate) struct Call {
    pub(crate) grpc_path: &'static str,
    pub(crate) proto: Bytes,
    /// `proto` in a gRPC-web frame.
    pub(crate) web_body: Bytes,
    pub(crate) http_method: Method,
    pub(crate) http_path: String,
    pub(crate) json_body: Option<Bytes>,
    pub(crate) streaming: bool,
}

impl Call {
    pub(crate) fn new(
        grpc_path: &'static str,
        message: &impl prost::Message,
        http_method: Method,
        http_path: impl Into<String>,
        json_body: Option<serde_json::Value>,
    ) -> Self {
        let proto = Bytes::from(message.encode_to_vec());
        Call {
            grpc_path,
            web_body: grpc_frame(0, &proto),
            proto,
            http_method,
            http_path: http_path.into(),
            json_body: json_body.map(|v| Bytes::from(serde_json::to_vec(&v).expect("JSON"))),
            streaming: false,
        }
    }

    pub(crate) fn streaming(mut self) -> Self {
        self.streaming = true;
        self
    }

    /// Method and path a signature for `protocol` covers.
    pub(crate) fn signed_target(&self, protocol: Protocol) -> (Method, &str) {
        match protocol {
            Protocol::Grpc | Protocol::GrpcWeb => (Method::POST, self.grpc_path),
            Protocol::Json => (self.http_method.clone(), &self.http_path),
        }
    }
}

/// What a connection does once per operation.
#[derive(Clone)]
pub(crate) enum Op {
    /// One call; signed by the connection's user when `signed`.
    Single { call: Call, signed: bool },
    /// A signed CreateExchange, then an unsigned AcceptExchange of its token
    /// with `answer`.
    CreateAccept { create: Call, answer: String },
}

impl Op {
    pub(crate) fn signed_call(&self) -> Option<&Call> {
        match self {
            Op::Single { call, signed: true } => Some(call),
            Op::Single { signed: false, .. } => None,
            Op::CreateAccept { create, .. } => Some(create),
        }
    }

    pub(crate) fn calls(&self) -> u32 {
        match self {
            Op::Single { .. } => 1,
            Op::CreateAccept { .. } => 2,
        }
    }
}

/// Signature header pairs, made ahead of time.
pub(crate) type Signature = (HeaderValue, HeaderValue);

pub(crate) fn sign_once(
    signer: &RequestSigner,
    method: &Method,
    uri: &Uri,
) -> anyhow::Result<Signature> {
    let (input, signature) = signer
        .sign(method, uri, &HeaderMap::new())
        .map_err(|e| anyhow::anyhow!("signing failed: {e}"))?;
    Ok((
        HeaderValue::try_from(input)?,
        HeaderValue::try_from(signature)?,
    ))
}

/// What one connection needs: its op, its signer and its signatures.
pub(crate) struct WorkerPlan {
    pub(crate) op: Op,
    pub(crate) signer: Option<RequestSigner>,
    pub(crate) signatures: Vec<Signature>,
}

/// The outcome of one call: body bytes received, and the response message
/// when the caller needs it.
pub(crate) struct CallOk {
    pub(crate) bytes: u64,
    pub(crate) message: Option<Bytes>,
}

/// A failed call: a status key (`grpc:Unavailable`, `http:503`, …) and
/// the message.
pub(crate) struct CallErr {
    pub(crate) key: String,
    pub(crate) message: String,
}

impl CallErr {
    pub(crate) fn grpc(status: &Status) -> Self {
        CallErr {
            key: format!("grpc:{:?}", status.code()),
            message: status.message().chars().take(200).collect(),
        }
    }
}

#[derive(Clone)]
pub(crate) enum Conn {
    Grpc(tonic::client::Grpc<Channel>),
    Http(Box<HttpClient>),
}

pub(crate) struct Worker {
    pub(crate) protocol: Protocol,
    pub(crate) conn: Conn,
    pub(crate) base: String,
    pub(crate) plan: WorkerPlan,
    /// Signatures made during the timed run because the pool ran out.
    pub(crate) signed_inline: u64,
}

impl Worker {
    pub(crate) fn next_signature(&mut self, call: &Call) -> Result<Signature, CallErr> {
        if let Some(sig) = self.plan.signatures.pop() {
            return Ok(sig);
        }
        let signer = self
            .plan
            .signer
            .as_ref()
            .expect("signed calls have a signer");
        self.signed_inline += 1;
        let (method, path) = call.signed_target(self.protocol);
        let uri: Uri = format!("{}{}", self.base, path).parse().expect("valid URI");
        sign_once(signer, &method, &uri).map_err(|e| CallErr {
            key: "client:sign".into(),
            message: e.to_string(),
        })
    }

    pub(crate) async fn op(&mut self) -> Result<u64, CallErr> {
        match self.plan.op.clone() {
            Op::Single { call, signed } => {
                let sig = if signed {
                    Some(self.next_signature(&call)?)
                } else {
                    None
                };
                Ok(self.call(&call, sig, false).await?.bytes)
            }
            Op::CreateAccept { create, answer } => {
                let sig = self.next_signature(&create)?;
                let created = self.call(&create, Some(sig), true).await?;
                let token = self.token_of(created.message.unwrap_or_default())?;
                let accept = Call::new(
                    EXCHANGES_ACCEPT,
                    &pb::AcceptExchangeRequest {
                        token: token.clone(),
                        answer: Some(answer.clone()),
                        user_id: None,
                    },
                    Method::POST,
                    format!("/v1/exchanges/{token}:accept"),
                    Some(serde_json::json!({ "answer": answer })),
                );
                let accepted = self.call(&accept, None, false).await?;
                Ok(created.bytes + accepted.bytes)
            }
        }
    }

    pub(crate) fn token_of(&self, message: Bytes) -> Result<String, CallErr> {
        let bad = |what: &str| CallErr {
            key: "client:bad-reply".into(),
            message: format!("CreateExchange reply: {what}"),
        };
        let token = match self.protocol {
            Protocol::Json => serde_json::from_slice::<serde_json::Value>(&message)
                .ok()
                .and_then(|v| v.get("token")?.as_str().map(str::to_owned)),
            Protocol::Grpc | Protocol::GrpcWeb => pb::CreateExchangeResponse::decode(message)
                .ok()
                .map(|r| r.token),
        };
        token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no token"))
    }

    pub(crate) async fn call(
        &mut self,
        call: &Call,
        sig: Option<Signature>,
        want_message: bool,
    ) -> Result<CallOk, CallErr> {
        call_on(&mut self.conn, self.protocol, call, sig, want_message).await
    }
}

/// One call over `conn` in `protocol`.
pub(crate) async fn call_on(
    conn: &mut Conn,
    protocol: Protocol,
    call: &Call,
    sig: Option<Signature>,
    want_message: bool,
) -> Result<CallOk, CallErr> {
    match conn {
        Conn::Grpc(grpc) => grpc_call(grpc, call, sig, want_message).await,
        Conn::Http(http) => match protocol {
            Protocol::GrpcWeb => grpc_web_call(http, call, sig).await,
            _ => json_call(http, call, sig).await,
        },
    }
}

pub(crate) async fn grpc_call(
    grpc: &mut tonic::client::Grpc<Channel>,
    call: &Call,
    sig: Option<Signature>,
    want_message: bool,
) -> Result<CallOk, CallErr> {
    let mut headers = HeaderMap::new();
    if let Some((input, signature)) = sig {
        headers.insert("signature-input", input);
        headers.insert("signature", signature);
    }
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        tonic::Extensions::default(),
        call.proto.clone(),
    );
    grpc.ready().await.map_err(|e| CallErr {
        key: "transport".into(),
        message: e.to_string(),
    })?;
    let path = http::uri::PathAndQuery::from_static(call.grpc_path);
    if call.streaming {
        let mut stream = grpc
            .server_streaming(request, path, RawCodec)
            .await
            .map_err(|s| CallErr::grpc(&s))?
            .into_inner();
        let mut bytes = 0u64;
        while let Some(chunk) = stream.message().await.map_err(|s| CallErr::grpc(&s))? {
            bytes += chunk.len() as u64;
        }
        Ok(CallOk {
            bytes,
            message: None,
        })
    } else {
        let reply = grpc
            .unary(request, path, RawCodec)
            .await
            .map_err(|s| CallErr::grpc(&s))?
            .into_inner();
        Ok(CallOk {
            bytes: reply.len() as u64,
            message: want_message.then_some(reply),
        })
    }
}

pub(crate) fn http_headers(sig: Option<Signature>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some((input, signature)) = sig {
        headers.insert("signature-input", input);
        headers.insert("signature", signature);
    }
    headers
}

pub(crate) async fn grpc_web_call(
    http: &HttpClient,
    call: &Call,
    sig: Option<Signature>,
) -> Result<CallOk, CallErr> {
    let mut headers = http_headers(sig);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc-web+proto"),
    );
    headers.insert("x-grpc-web", HeaderValue::from_static("1"));
    let reply = http
        .send(http.request(Method::POST, call.grpc_path, headers, call.web_body.clone()))
        .await
        .map_err(|s| CallErr {
            key: "transport".into(),
            message: s.message().to_owned(),
        })?;
    decode_grpc_web(reply)
}

/// Splits a gRPC-web response into messages and its status.
pub(crate) fn decode_grpc_web(reply: HttpReply) -> Result<CallOk, CallErr> {
    if reply.status != http::StatusCode::OK {
        return Err(CallErr {
            key: format!("http:{}", reply.status.as_u16()),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
        });
    }
    let mut status = reply
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok());
    let mut message = reply
        .headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = reply.body;
    let mut first = None;
    let mut bytes = 0u64;
    let truncated = || CallErr {
        key: "client:bad-reply".into(),
        message: "truncated gRPC-web frame".into(),
    };
    while body.has_remaining() {
        if body.len() < 5 {
            return Err(truncated());
        }
        let flags = body.get_u8();
        let len = body.get_u32() as usize;
        if body.len() < len {
            return Err(truncated());
        }
        let payload = body.split_to(len);
        if flags & 0x80 != 0 {
            for line in String::from_utf8_lossy(&payload).split("\r\n") {
                match line.split_once(':') {
                    Some((name, value)) if name.eq_ignore_ascii_case("grpc-status") => {
                        status = value.trim().parse().ok();
                    }
                    Some((name, value)) if name.eq_ignore_ascii_case("grpc-message") => {
                        message = Some(value.trim().to_owned());
                    }
                    _ => {}
                }
            }
        } else {
            bytes += payload.len() as u64;
            first.get_or_insert(payload);
        }
    }
    match status {
        Some(0) => Ok(CallOk {
            bytes,
            message: first,
        }),
        Some(code) => Err(CallErr {
            key: format!("grpc:{:?}", Code::from_i32(code)),
            message: message
                .map(|m| {
                    percent_encoding::percent_decode_str(&m)
                        .decode_utf8_lossy()
                        .chars()
                        .take(200)
                        .collect()
                })
                .unwrap_or_default(),
        }),
        None => Err(CallErr {
            key: "client:bad-reply".into(),
            message: "gRPC-web response without grpc-status".into(),
        }),
    }
}

pub(crate) async fn json_call(
    http: &HttpClient,
    call: &Call,
    sig: Option<Signature>,
) -> Result<CallOk, CallErr> {
    let mut headers = http_headers(sig);
    let body = match &call.json_body {
        Some(body) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            body.clone()
        }
        None => Bytes::new(),
    };
    let reply = http
        .send(http.request(call.http_method.clone(), &call.http_path, headers, body))
        .await
        .map_err(|s| CallErr {
            key: "transport".into(),
            message: s.message().to_owned(),
        })?;
    if !reply.status.is_success() {
        return Err(CallErr {
            key: format!("http:{}", reply.status.as_u16()),
            message: String::from_utf8_lossy(&reply.body)
                .chars()
                .take(200)
                .collect(),
        });
    }
    Ok(CallOk {
        bytes: reply.body.len() as u64,
        message: Some(reply.body),
    })
}
