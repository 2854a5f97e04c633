//! Contact exchanges and sign-up (SPEC §3), through all three protocols.

use http::Method;
use piqchat_inbox::pb::{self, ExchangeState, SignUpResult};
use tonic::Code;

use crate::harness::{TestApp, token_of_link};

const ACCEPT: &str = "/piqchat.inbox.v1.ExchangeService/AcceptExchange";
const GET: &str = "/piqchat.inbox.v1.ExchangeService/GetExchange";

fn accept(token: &str, answer: Option<&str>, user_id: Option<String>) -> pb::AcceptExchangeRequest {
    pb::AcceptExchangeRequest {
        token: token.to_owned(),
        answer: answer.map(str::to_owned),
        user_id,
    }
}

#[tokio::test]
async fn friends_swap_cards_through_an_exchange() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;

    let created = alice
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "alice-card".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.token.len(), 36);
    assert_eq!(
        created.accept_url,
        format!("https://{}/v1/exchanges/{}:accept", app.addr, created.token)
    );
    let expires = created.expires_at.unwrap();
    assert!((expires.seconds * 1000 - app.clock.now() - 3_600_000).abs() < 2000);

    let state = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: created.token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.state(), ExchangeState::Initiated);
    assert_eq!(state.answer, None);

    // Bob accepts over the JSON gateway (public: no signature needed).
    let reply = app
        .http()
        .json(
            Method::POST,
            &format!("/v1/exchanges/{}:accept", created.token),
            Some(&serde_json::json!({"answer": "bob-card"})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["offer"], "alice-card");
    assert_eq!(reply.json()["signUp"], "SIGN_UP_RESULT_NOT_REQUESTED");

    // Alice reads the answer over gRPC-web.
    let state: pb::GetExchangeResponse = alice
        .http()
        .grpc_web_unary(
            GET,
            &pb::GetExchangeRequest {
                token: created.token.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(state.state(), ExchangeState::Accepted);
    assert_eq!(state.answer.as_deref(), Some("bob-card"));
    drop(bob);

    // A second accept of the same token is refused, and says why.
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&created.token, Some("again"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "this invite was already used");
}

#[tokio::test]
async fn the_first_start_invite_signs_up_the_first_user() {
    let app = TestApp::spawn().await;
    let link = app
        .sign_up_invite
        .clone()
        .expect("a sign-up invite on first start");
    assert!(link.starts_with("https://piqchat.net/#?exchange-url=https%3A%2F%2Finput_inbox_server_host%2Fv1%2Fexchanges%2F"), "{link}");
    assert!(link.ends_with("%3Aaccept&exchange-key="), "{link}");

    let user = app.user();
    // Over gRPC-web, as the browser app does.
    let reply: pb::AcceptExchangeResponse = app
        .http()
        .grpc_web_unary(
            ACCEPT,
            &accept(&token_of_link(&link), None, Some(user.id())),
        )
        .await
        .unwrap();
    assert_eq!(reply.sign_up(), SignUpResult::Created);
    assert_eq!(reply.offer, "");
    let account = user
        .accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(account.user_id, user.id());

    // With a user registered and the invite used, a restart makes no new one.
    let app = app.restart().await;
    assert!(app.sign_up_invite.is_none());
}

#[tokio::test]
async fn an_open_sign_up_invite_is_not_duplicated_unless_forced() {
    let app = TestApp::spawn().await;
    assert!(app.sign_up_invite.is_some());
    let app = app.restart().await;
    assert!(
        app.sign_up_invite.is_none(),
        "the first invite is still open"
    );
    let dir = app.dir.clone();
    let mut config = (*app.state.config).clone();
    app.stop().await;
    config.create_sign_up_invite = true;
    let app = TestApp::spawn_with(|c| {
        c.database_path = config.database_path.clone();
        c.attachments_path = config.attachments_path.clone();
        c.create_sign_up_invite = true;
    })
    .await;
    assert!(
        app.sign_up_invite.is_some(),
        "CREATE_SIGN_UP_INVITE forces one"
    );
    drop(dir);
}

#[tokio::test]
async fn accepting_with_a_registered_user_id_creates_no_second_account() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    let token = alice.create_invite("card").await;
    let reply = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, Some("bob"), Some(bob.id())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.sign_up(), SignUpResult::AlreadyRegistered);
    let stats = app.state.store.statistics(app.clock.now()).await.unwrap();
    assert_eq!(stats.users_total, 2);
}

#[tokio::test]
async fn signing_up_through_a_friend_invite_records_the_inviter() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let carol = app.user();
    let token = alice.create_invite("card").await;
    let reply = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, Some("carol-card"), Some(carol.id())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.sign_up(), SignUpResult::Created);
    let carol_row = app.user_row(&carol).await;
    let alice_row = app.user_row(&alice).await;
    assert_eq!(carol_row.invited_by, Some(alice_row.entry_id));
}

#[tokio::test]
async fn a_user_of_another_server_accepts_an_invite_here() {
    let here = TestApp::spawn().await;
    let there = TestApp::spawn().await;
    let bob_here = here.registered_user().await;
    let xavier_there = there.registered_user().await;

    let token = bob_here
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "bob-card".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    // Xavier's app talks to *this* server to accept; his card names his own
    // inbox server. He does not sign up here.
    let reply = here
        .exchanges()
        .await
        .accept_exchange(accept(
            &token,
            Some(&format!("xavier@{}", there.addr)),
            None,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.offer, "bob-card");
    assert_eq!(reply.sign_up(), SignUpResult::NotRequested);
    let state = bob_here
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest { token })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.answer, Some(format!("xavier@{}", there.addr)));
    // Nothing about Xavier was stored here.
    assert!(
        here.state
            .store
            .user_by_key(&xavier_there.key.user_id())
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn revoked_exchanges_are_gone() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let token = alice.create_invite("card").await;
    // Revoke over the JSON gateway.
    let reply = alice
        .http()
        .json(Method::DELETE, &format!("/v1/exchanges/{token}"), None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let err = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = alice
        .exchanges()
        .await
        .revoke_exchange(pb::RevokeExchangeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, Some("x"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "unknown invite: check the link");
}

#[tokio::test]
async fn exchanges_expire_after_the_configured_lifetime() {
    let app = TestApp::spawn_with(|c| c.exchange_ttl_minutes = 30).await;
    let alice = app.registered_user().await;
    let mut tokens = Vec::new();
    for _ in 0..2 {
        tokens.push(alice.create_invite("card").await);
    }
    // One second before the end: still open.
    app.clock.advance(30 * 60_000 - 1000);
    let state = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: tokens[0].clone(),
        })
        .await
        .unwrap();
    assert_eq!(state.into_inner().state(), ExchangeState::Initiated);
    app.exchanges()
        .await
        .accept_exchange(accept(&tokens[0], Some("in time"), None))
        .await
        .unwrap();

    // At the end: gone for the creator, "expired" for the acceptor.
    app.clock.advance(1000);
    let err = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: tokens[1].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&tokens[1], Some("late"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "this invite has expired; ask for a new one");
    // An exchange accepted in time keeps its answer readable.
    let state = alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: tokens[0].clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state.answer.as_deref(), Some("in time"));
}

#[tokio::test]
async fn another_users_token_looks_exactly_like_an_unknown_one() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let mallory = app.registered_user().await;
    let token = alice.create_invite("card").await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let foreign = mallory
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    let missing = mallory
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest {
            token: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (foreign.code(), foreign.message()),
        (missing.code(), missing.message())
    );
    assert_eq!(foreign.code(), Code::NotFound);
    let foreign = mallory
        .exchanges()
        .await
        .revoke_exchange(pb::RevokeExchangeRequest {
            token: token.clone(),
        })
        .await
        .unwrap_err();
    let missing = mallory
        .exchanges()
        .await
        .revoke_exchange(pb::RevokeExchangeRequest { token: unknown })
        .await
        .unwrap_err();
    assert_eq!(
        (foreign.code(), foreign.message()),
        (missing.code(), missing.message())
    );
    // Alice's exchange is untouched.
    alice
        .exchanges()
        .await
        .get_exchange(pb::GetExchangeRequest { token })
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_exchange_input_gets_clear_errors() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let stranger = app.user();

    let err = stranger
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "card".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let err = alice
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let big = "x".repeat(64 * 1024 + 1);
    let err = alice
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest { offer: big.clone() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 65536 bytes"), "{err:?}");
    // Exactly at the limit is fine.
    alice
        .exchanges()
        .await
        .create_exchange(pb::CreateExchangeRequest {
            offer: "x".repeat(64 * 1024),
        })
        .await
        .unwrap();

    let err = app
        .exchanges()
        .await
        .accept_exchange(accept("not-a-token", Some("a"), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("exchange token"), "{err:?}");
    let token = alice.create_invite("card").await;
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, None, None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, None, Some("bad-id".into())))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("user id"), "{err:?}");
    let err = app
        .exchanges()
        .await
        .accept_exchange(accept(&token, Some(&big), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    // None of the refused accepts used up the invite.
    app.exchanges()
        .await
        .accept_exchange(accept(&token, Some("ok"), None))
        .await
        .unwrap();

    // The same through the JSON gateway: status codes and a JSON body.
    let reply = app
        .http()
        .json(
            Method::POST,
            "/v1/exchanges/nope:accept",
            Some(&serde_json::json!({"answer": "a"})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["code"], 3);
    let reply = alice
        .http()
        .json(
            Method::GET,
            &format!("/v1/exchanges/{}", uuid::Uuid::new_v4()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["message"], "no such exchange");
}

#[tokio::test]
async fn of_fifty_concurrent_accepts_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let token = alice.create_invite("card").await;
    let channel = app.channel().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = pb::exchange_service_client::ExchangeServiceClient::new(channel.clone());
        let req = accept(&token, Some(&format!("answer-{i}")), Some(app.user().id()));
        tasks.push(tokio::spawn(
            async move { client.accept_exchange(req).await },
        ));
    }
    let mut wins = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(reply) => wins.push(reply.into_inner()),
            Err(e) => {
                assert_eq!(e.code(), Code::NotFound, "{e:?}");
                assert_eq!(e.message(), "this invite was already used");
            }
        }
    }
    assert_eq!(wins.len(), 1);
    assert_eq!(wins[0].sign_up(), SignUpResult::Created);
    // Exactly one account was created with it (plus alice).
    let stats = app.state.store.statistics(app.clock.now()).await.unwrap();
    assert_eq!(stats.users_total, 2);
}
