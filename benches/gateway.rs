//! The JSON gateway in process: route match, JSON → protobuf transcoding of
//! the request, the in-process call (here a stub that answers at once with a
//! canned gRPC reply) and protobuf → JSON of the reply. No network, no
//! handler work: what the gateway itself costs per request.

use std::{convert::Infallible, hint::black_box, time::Duration};

use axum::body::Body;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt as _, StreamBody};
use piqchat_inbox::{
    api::{
        FILE_DESCRIPTOR_SET,
        gateway::{BodyLimits, Gateway},
    },
    client::grpc_frame,
    pb,
};
use prost::Message as _;
use prost_reflect::DescriptorPool;
use tower::Service as _;

const USER: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

/// A gRPC reply: one message frame, then `grpc-status: 0` in the trailers.
fn grpc_reply(message: Vec<u8>) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(grpc_frame(0, &message))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
        .expect("response")
}

fn canned(path: &str) -> Vec<u8> {
    match path {
        "/piqchat.inbox.v1.InfoService/GetInfo" => pb::GetInfoResponse {
            server_public_key: USER.into(),
            vapid_public_key: "B".repeat(87),
            admin_display_name: "Admin".into(),
            admin_message: "Hello\nworld".into(),
            limits: Some(pb::Limits {
                max_attachment_bytes: 20 << 20,
                max_recipients: 100,
                ..Default::default()
            }),
            statistics: Some(pb::Statistics {
                users_total: 1000,
                media_parcels_waiting: 123_456,
                ..Default::default()
            }),
            server_version: "0.1.0".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        "/piqchat.inbox.v1.ParcelService/ListParcels" => pb::ListParcelsResponse {
            parcels: (0..20)
                .map(|i| pb::Parcel {
                    id: format!("3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e{i:02}"),
                    r#type: "MEDIA".into(),
                    content: "k".repeat(160),
                    sender_id: USER.into(),
                    sent_at: Some(prost_types::Timestamp {
                        seconds: 1_767_225_600 + i,
                        nanos: 0,
                    }),
                    attachment_size: Some(102_400),
                })
                .collect(),
            next_page_token: String::new(),
        }
        .encode_to_vec(),
        "/piqchat.inbox.v1.ParcelService/SendParcel" => pb::SendParcelResponse {
            delivered_recipient_ids: vec![USER.into()],
            forbidden_recipient_ids: vec![],
        }
        .encode_to_vec(),
        "/piqchat.inbox.v1.ExchangeService/AcceptExchange" => pb::AcceptExchangeResponse {
            offer: "o".repeat(200),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_767_229_200,
                nanos: 0,
            }),
            sign_up: pb::SignUpResult::NotRequested as i32,
        }
        .encode_to_vec(),
        _ => Vec::new(),
    }
}

fn json_request(method: Method, path: &str, body: Option<&Bytes>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:8080");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    b.body(body.map_or_else(Body::empty, |b| Body::from(b.clone())))
        .expect("request")
}

fn gateway(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("descriptors");
    let stub = tower::service_fn(|req: Request<Body>| async move {
        // Read the transcoded request like a server would, then answer.
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.expect("body").to_bytes();
        black_box(body);
        Ok::<_, Infallible>(grpc_reply(canned(&path)))
    });
    let mut gw = Gateway::new(&pool, stub, BodyLimits::new(64 << 20)).expect("gateway");

    let small_send = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "type": "MEDIA",
            "recipients": [{ "userId": USER, "content": "k".repeat(160) }],
        }))
        .expect("json"),
    );
    let big_send = Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "type": "MEDIA",
            "recipients": [{ "userId": USER, "content": "k".repeat(160) }],
            "attachment": STANDARD.encode(vec![0xa5u8; 100 * 1024]),
        }))
        .expect("json"),
    );
    let accept = Bytes::from(
        serde_json::to_vec(&serde_json::json!({ "answer": "a".repeat(200) })).expect("json"),
    );

    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(1));
    let cases: Vec<(&str, Method, &str, Option<&Bytes>, u16)> = vec![
        ("get_info", Method::GET, "/v1/info", None, 200),
        ("list_parcels_20", Method::GET, "/v1/parcels", None, 200),
        (
            "send_parcel_no_attachment",
            Method::POST,
            "/v1/parcels",
            Some(&small_send),
            200,
        ),
        (
            "send_parcel_100k_attachment",
            Method::POST,
            "/v1/parcels",
            Some(&big_send),
            200,
        ),
        (
            "accept_exchange_path_variable",
            Method::POST,
            "/v1/exchanges/3f2b8c1e-5d4a-4b7e-9c2d-1a2b3c4d5e6f:accept",
            Some(&accept),
            200,
        ),
        ("no_route", Method::GET, "/v1/nothing/here", None, 404),
    ];
    for (name, method, path, body, status) in cases {
        group.bench_function(name, |b| {
            b.iter_batched(
                || json_request(method.clone(), path, body),
                |req| {
                    let res = rt.block_on(async {
                        let res = gw.call(req).await.expect("infallible");
                        let status = res.status();
                        let body = res.into_body().collect().await.expect("body").to_bytes();
                        (status, body)
                    });
                    assert_eq!(res.0.as_u16(), status, "{name}: {:?}", res.1);
                    res
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = gateway
}
criterion_main!(benches);
