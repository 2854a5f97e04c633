//! Request authentication at the edge: the whole check a signed request
//! passes (`AuthLayer`: parse, policy, signature base, Ed25519, nonce
//! store with its commit), its parts, and raw Ed25519 verification on one core (the limit
//! the server's signed-request throughput compares against).
//!
//! Each verified request needs a fresh signature (its nonce is accepted
//! once), so signing happens in criterion's untimed setup.

use std::{convert::Infallible, hint::black_box, time::Duration};

use axum::body::Body;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};
use http::{HeaderMap, Method, Request, Response, Uri, header};
use piqchat_inbox::{
    api::{
        auth::{AuthLayer, Verifier},
        replay::Replay,
    },
    app::AppState,
    client::{RequestSigner, UserKey},
    clock::Clock,
    config::Config,
    domain::Caller,
    httpsig::{self, RequestParts},
};
use tower::{Layer as _, Service as _};

const GRPC_URI: &str = "http://127.0.0.1:8080/piqchat.inbox.v1.ParcelService/ListParcels";

fn signed_request(signer: &RequestSigner, uri: &Uri) -> Request<Body> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(Body::empty())
        .expect("request");
    signer.sign_request(&mut req).expect("signs");
    req
}

fn auth(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::for_dir(dir.path());
    // Criterion makes far more signed requests than a real client within
    // the replay window; keep the nonce store from filling up during the bench.
    config.nonce_budgets.unknown = 50_000_000;
    config.nonce_budgets.per_key = 50_000_000;
    let state = rt
        .block_on(AppState::open(config, Clock::system()))
        .expect("state");
    let verifier = Verifier::new(&state);
    let inner = tower::service_fn(|req: Request<Body>| async move {
        let status = if req.extensions().get::<Caller>().is_some() {
            200
        } else {
            500
        };
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(Body::empty())
                .expect("response"),
        )
    });
    let mut layer = AuthLayer::new(verifier).layer(inner);
    let signer = RequestSigner::new(UserKey::generate(), state.identity.public_key());
    let uri: Uri = GRPC_URI.parse().expect("uri");

    let mut group = c.benchmark_group("auth");
    group.throughput(Throughput::Elements(1));
    group.bench_function("edge_check_signed_grpc_request", |b| {
        b.iter_batched(
            || signed_request(&signer, &uri),
            |req| {
                let res = rt.block_on(layer.call(req)).expect("infallible");
                assert_eq!(res.status(), 200, "the signature must verify");
                res
            },
            BatchSize::SmallInput,
        )
    });

    // The same steps without the tower layer and the nonce store.
    let public = *signer.user_id().as_bytes();
    group.bench_function("httpsig_parse_base_verify", |b| {
        b.iter_batched(
            || signed_request(&signer, &uri).into_parts().0,
            |parts| {
                let sig = httpsig::parse(&parts.headers).expect("parses").remove(0);
                let request = RequestParts {
                    method: parts.method.as_str(),
                    authority: parts.uri.authority().expect("authority").as_str(),
                    scheme: "http",
                    path: parts.uri.path(),
                    query: None,
                    headers: &parts.headers,
                };
                let base = httpsig::signature_base(&sig, &request).expect("base");
                httpsig::verify_ed25519(&base, &sig.signature, &public).expect("verifies");
            },
            BatchSize::SmallInput,
        )
    });

    // A nonce checked, recorded and committed (alone: no other request
    // shares the commit here).
    group.bench_function("nonce_store_check_and_insert", |b| {
        let key = UserKey::generate().user_id();
        let mut i = 0u64;
        let now = Clock::system().now();
        b.iter(|| {
            i += 1;
            let nonce = format!("{i:032x}");
            rt.block_on(async {
                match state
                    .nonces
                    .check_and_insert(&key, &nonce, now + 300_000, now)
                    .await
                    .expect("checks")
                {
                    Replay::Fresh(durable) => durable.await.expect("commits"),
                    _ => panic!("a fresh nonce was refused"),
                }
            })
        })
    });

    group.bench_function("client_sign_request", |b| {
        b.iter(|| {
            black_box(
                signer
                    .sign(&Method::POST, &uri, &HeaderMap::new())
                    .expect("signs"),
            )
        })
    });
    group.finish();

    // Raw Ed25519 (strict) on one core: verifications per second is the
    // element rate criterion prints.
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let base = format!(
        "\"@method\": POST\n\"@authority\": 127.0.0.1:8080\n\"@path\": /piqchat.inbox.v1.ParcelService/ListParcels\n\"@signature-params\": (\"@method\" \"@authority\" \"@path\");created=1767225600;nonce=\"oKGio6SlpqeoqaqrrK2urw\";alg=\"ed25519\";keyid=\"{}\";tag=\"PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw\"",
        httpsig::user_id(&key.verifying_key().to_bytes())
    );
    let sig = key.sign(base.as_bytes());
    let verifying = key.verifying_key();
    let mut group = c.benchmark_group("ed25519");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_strict", |b| {
        b.iter(|| {
            verifying
                .verify_strict(black_box(base.as_bytes()), black_box(&sig))
                .expect("verifies")
        })
    });
    group.bench_function("verify_strict_with_key_decode", |b| {
        let bytes = verifying.to_bytes();
        let sig_bytes = sig.to_bytes();
        b.iter(|| {
            httpsig::verify_ed25519(black_box(&base), black_box(&sig_bytes), black_box(&bytes))
                .expect("verifies")
        })
    });
    group.bench_function("sign", |b| b.iter(|| key.sign(black_box(base.as_bytes()))));
    group.finish();
    drop(dir);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = auth
}
criterion_main!(benches);
