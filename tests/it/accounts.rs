//! Accounts, profile backups and push subscriptions (SPEC §5).

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::Method;
use piqchat_inbox::{
    client::UserKey,
    pb::{self, LastSeen},
};
use serde_json::json;
use tonic::Code;

use crate::harness::{TestApp, TestUser, browser_subscription};

const GET_ACCOUNT: &str = "/piqchat.inbox.v1.AccountService/GetAccount";

async fn get_account(user: &TestUser) -> Result<pb::GetAccountResponse, tonic::Status> {
    user.accounts()
        .await
        .get_account(pb::GetAccountRequest {})
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn get_account_shows_the_settings_and_refuses_strangers() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    alice.set_contacts(&[&bob]).await;
    let account = get_account(&alice).await.unwrap();
    assert_eq!(account.user_id, alice.id());
    assert_eq!(account.contact_ids, vec![bob.id()]);
    assert!(!account.push_subscribed);
    assert!(!account.is_admin);
    assert!((account.created_at.unwrap().seconds * 1000 - app.clock.now()).abs() < 2000);

    let web: pb::GetAccountResponse = alice
        .http()
        .grpc_web_unary(GET_ACCOUNT, &pb::GetAccountRequest {})
        .await
        .unwrap();
    assert_eq!(web, account);
    let json = alice
        .http()
        .json(Method::GET, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(json.status, 200);
    assert_eq!(json.json()["userId"], alice.id());

    let stranger = app.user();
    assert_eq!(
        get_account(&stranger).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let json = stranger
        .http()
        .json(Method::GET, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(json.status, 403);
}

#[tokio::test]
async fn set_contacts_replaces_the_whitelist_that_sending_checks() {
    let app = TestApp::spawn_with(|c| c.limits.max_contacts = 3).await;
    let alice = app.registered_user().await;
    let bob = app.registered_user().await;
    let carol = app.registered_user().await;

    // Duplicates count once; over JSON.
    let reply = bob
        .http()
        .json(
            Method::PUT,
            "/v1/account/contacts",
            Some(&json!({"contactIds": [alice.id(), alice.id(), carol.id()]})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert_eq!(reply.json()["contactCount"], 2);
    assert_eq!(
        alice
            .send("MEDIA", &[&bob], None)
            .await
            .unwrap()
            .delivered_recipient_ids,
        vec![bob.id()]
    );

    // Replaced: alice is no longer accepted on the very next send.
    bob.set_contacts(&[&carol]).await;
    let err = alice.send("MEDIA", &[&bob], None).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    carol.send("MEDIA", &[&bob], None).await.unwrap();

    let mut accounts = bob.accounts().await;
    let err = accounts
        .set_contacts(pb::SetContactsRequest {
            contact_ids: vec![alice.id(), "bad".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("contact_ids[1]: invalid user id"),
        "{err:?}"
    );
    let many: Vec<String> = (0..4)
        .map(|_| UserKey::generate().user_id().to_string())
        .collect();
    let err = accounts
        .set_contacts(pb::SetContactsRequest { contact_ids: many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("MAX_CONTACTS"), "{err:?}");
    // The refused calls changed nothing.
    assert_eq!(
        get_account(&bob).await.unwrap().contact_ids,
        vec![carol.id()]
    );
    // Clearing the whitelist.
    bob.set_contacts(&[]).await;
    assert!(get_account(&bob).await.unwrap().contact_ids.is_empty());
    let err = app
        .user()
        .accounts()
        .await
        .set_contacts(pb::SetContactsRequest {
            contact_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

/// Signs `new` up through an invite created by `inviter`.
async fn invite(app: &TestApp, inviter: &TestUser) -> TestUser {
    let new = app.user();
    let token = inviter.create_invite("card").await;
    app.exchanges()
        .await
        .accept_exchange(pb::AcceptExchangeRequest {
            token,
            answer: None,
            user_id: Some(new.id()),
        })
        .await
        .unwrap();
    new
}

#[tokio::test]
async fn invited_users_show_the_callers_invitees_and_the_admin_sees_all() {
    let admin_key = UserKey::generate();
    let admin_id = admin_key.user_id();
    let app = TestApp::spawn_with(|c| c.admin_id = Some(admin_id)).await;
    let admin = TestUser::new(&app, admin_key);
    app.sign_up(&admin).await;
    let alice = app.registered_user().await;
    let bob = invite(&app, &alice).await;
    let carol = invite(&app, &alice).await;
    let dave = invite(&app, &bob).await;
    let mut req = tonic::Request::new(pb::ListParcelsRequest::default());
    req.metadata_mut()
        .insert("x-client-version", "1.2.3".parse().unwrap());
    bob.parcels().await.list_parcels(req).await.unwrap();

    let list = |u: TestUser| async move {
        u.accounts()
            .await
            .list_invited_users(pb::ListInvitedUsersRequest {})
            .await
            .unwrap()
            .into_inner()
            .users
    };
    let users = list(alice.clone()).await;
    let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(ids, vec![alice.id(), bob.id(), carol.id()]);
    let alice_entry = users[0].entry_id;
    assert_eq!(users[1].invited_by_entry_id, Some(alice_entry));
    assert_eq!(users[1].last_seen(), LastSeen::Recently);
    assert_eq!(users[2].last_seen(), LastSeen::Never);
    assert!(
        users.iter().all(|u| u.client_version.is_none()),
        "only the admin sees versions"
    );

    let users = list(admin.clone()).await;
    assert_eq!(users.len(), 5);
    let bob_row = users.iter().find(|u| u.user_id == bob.id()).unwrap();
    assert_eq!(bob_row.client_version.as_deref(), Some("1.2.3"));
    assert!(users.iter().any(|u| u.user_id == dave.id()));
    assert!(get_account(&admin).await.unwrap().is_admin);

    let reply = alice
        .http()
        .json(Method::GET, "/v1/account/invited-users", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["users"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn backups_are_stored_read_and_limited() {
    let app = TestApp::spawn_with(|c| c.limits.max_backup_bytes = 1000).await;
    let alice = app.registered_user().await;
    let err = alice
        .backups()
        .await
        .get_backup(pb::GetBackupRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let put = alice
        .backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: "cipher-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let t0 = app.clock.now();
    assert_eq!(put.updated_at.unwrap().seconds, t0 / 1000);
    app.clock.advance(60_000);
    let first = alice
        .backups()
        .await
        .get_backup(pb::GetBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.content, "cipher-1");
    assert_eq!(first.last_read_at, None, "never read before");
    app.clock.advance(60_000);
    let second = alice
        .backups()
        .await
        .get_backup(pb::GetBackupRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        second.last_read_at.unwrap().seconds,
        (t0 + 60_000) / 1000,
        "the first read was recorded"
    );

    // Upsert over JSON.
    let reply = alice
        .http()
        .json(
            Method::PUT,
            "/v1/account/backup",
            Some(&json!({"content": "cipher-2"})),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let reply = alice
        .http()
        .json(Method::GET, "/v1/account/backup", None)
        .await
        .unwrap();
    assert_eq!(reply.json()["content"], "cipher-2");

    let err = alice
        .backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: "x".repeat(1001),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("at most 1000 bytes"));
    let err = alice
        .backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = app
        .user()
        .backups()
        .await
        .get_backup(pb::GetBackupRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn the_push_subscription_shim_takes_browser_json() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let sub = browser_subscription();
    let reply = alice.put_push_subscription(&sub).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    assert!(get_account(&alice).await.unwrap().push_subscribed);
    let row = app.user_row(&alice).await;
    let stored = app
        .state
        .store
        .push_subscription(row.entry_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.endpoint, sub["endpoint"]);
    assert_eq!(stored.content_encoding, "aes128gcm");
    assert_eq!(stored.p256dh.len(), 65);

    // Replaced by a legacy-encoding subscription with an expiration time.
    let mut legacy = browser_subscription();
    legacy["contentEncoding"] = json!("aesgcm");
    legacy["expirationTime"] = json!(1_900_000_000_000.0_f64);
    let reply = alice.put_push_subscription(&legacy).await;
    assert_eq!(reply.status, 200, "{:?}", reply.json());
    let stored = app
        .state
        .store
        .push_subscription(row.entry_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.content_encoding.as_str(), stored.expires_at),
        ("aesgcm", Some(1_900_000_000_000))
    );

    let reply = alice
        .http()
        .json(Method::DELETE, "/v1/account/push-subscription", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    assert!(!get_account(&alice).await.unwrap().push_subscribed);

    // The same over gRPC for non-browser clients.
    let keys = &sub["keys"];
    alice
        .accounts()
        .await
        .set_push_subscription(pb::SetPushSubscriptionRequest {
            endpoint: "https://updates.push.services.mozilla.com/wpush/v2/gAAAA".into(),
            expiration_time: None,
            keys: Some(pb::PushSubscriptionKeys {
                p256dh: keys["p256dh"].as_str().unwrap().into(),
                auth: keys["auth"].as_str().unwrap().into(),
            }),
            content_encoding: None,
        })
        .await
        .unwrap();
    assert!(get_account(&alice).await.unwrap().push_subscribed);
}

#[tokio::test]
async fn push_subscriptions_are_validated_field_by_field() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bad = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut sub = browser_subscription();
        change(&mut sub);
        sub
    };
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (
            bad(&|s| s["endpoint"] = json!("http://push.example.org/x")),
            "endpoint",
        ),
        (bad(&|s| s["endpoint"] = json!("/relative")), "endpoint"),
        (
            bad(&|s| {
                s["endpoint"] = json!(format!("https://push.example.org/{}", "a".repeat(2100)))
            }),
            "endpoint",
        ),
        (bad(&|s| s["keys"]["p256dh"] = json!("AAAA")), "keys.p256dh"),
        // 65 bytes starting with 4 but not a point on the curve.
        (
            bad(&|s| s["keys"]["p256dh"] = json!(URL_SAFE_NO_PAD.encode([4u8; 65]))),
            "keys.p256dh",
        ),
        (
            bad(&|s| s["keys"]["auth"] = json!(URL_SAFE_NO_PAD.encode([1u8; 15]))),
            "keys.auth",
        ),
        (
            bad(&|s| s["keys"]["auth"] = json!("not base64!")),
            "keys.auth",
        ),
        (
            bad(&|s| s["contentEncoding"] = json!("gzip")),
            "contentEncoding",
        ),
        (bad(&|s| s["expirationTime"] = json!(-5)), "expirationTime"),
        (bad(&|s| s["surprise"] = json!(1)), "surprise"),
        (bad(&|s| s["keys"] = json!(null)), "keys.p256dh"),
    ];
    for (body, field) in cases {
        let reply = alice.put_push_subscription(&body).await;
        assert_eq!(reply.status, 400, "{field}: {:?}", reply.json());
        let message = reply.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(field), "{message:?} should name {field}");
    }
    assert!(!get_account(&alice).await.unwrap().push_subscribed);
}

#[tokio::test]
async fn deleting_an_account_really_deletes() {
    let app = TestApp::spawn().await;
    let alice = app.registered_user().await;
    let bob = invite(&app, &alice).await;
    let carol = invite(&app, &bob).await;
    // A contact no other table knows, so its bytes are unique in the file.
    let ghost = TestUser::new(&app, UserKey::generate());
    bob.set_contacts(&[&alice, &ghost]).await;
    alice
        .send("MEDIA", &[&bob], Some(b"attachment-for-bob".to_vec()))
        .await
        .unwrap();
    let marker_content = "parcel-content-marker-7f3a9c";
    alice
        .parcels()
        .await
        .send_parcel(pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients: vec![pb::ParcelRecipient {
                user_id: bob.id(),
                content: marker_content.into(),
            }],
            attachment: None,
        })
        .await
        .unwrap();
    let marker_backup = "backup-ciphertext-marker-51be02";
    bob.backups()
        .await
        .put_backup(pb::PutBackupRequest {
            content: marker_backup.into(),
        })
        .await
        .unwrap();
    let reply = bob.put_push_subscription(&browser_subscription()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.attachment_files().await, 1);

    let reply = bob
        .http()
        .json(Method::DELETE, "/v1/account", None)
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{:?}", reply.json());

    assert_eq!(
        get_account(&bob).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let err = bob
        .parcels()
        .await
        .list_parcels(pb::ListParcelsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let sent = alice.send("MEDIA", &[&bob], None).await.unwrap_err();
    assert_eq!(
        sent.code(),
        Code::PermissionDenied,
        "bob can no longer receive"
    );
    assert_eq!(app.attachment_files().await, 0);

    // Others' links keep their shape: carol is still "invited by" bob's entry,
    // and alice's view shows bob's entry without an id.
    let users = alice
        .accounts()
        .await
        .list_invited_users(pb::ListInvitedUsersRequest {})
        .await
        .unwrap()
        .into_inner()
        .users;
    assert_eq!(users.len(), 2);
    assert_eq!(users[1].user_id, "");
    let carol_row = app.user_row(&carol).await;
    assert_eq!(carol_row.invited_by, Some(i64::from(users[1].entry_id)));

    // The content is gone from the database files themselves.
    if app.skip_unless_sqlite("reads the SQLite file for deleted content") {
        return;
    }
    let mut bytes = std::fs::read(app.db_path()).unwrap();
    let wal = app.db_path().with_extension("sqlite-wal");
    bytes.extend(std::fs::read(&wal).unwrap_or_default());
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(
        !contains(marker_content.as_bytes()),
        "parcel content left in the database file"
    );
    assert!(
        !contains(marker_backup.as_bytes()),
        "backup left in the database file"
    );
    assert!(
        !contains(ghost.key.user_id().as_bytes()),
        "contact id left in the database file"
    );
    assert!(
        !contains(bob.key.user_id().as_bytes()),
        "the key left in the database file"
    );

    // Bob can sign up again from scratch.
    app.sign_up(&bob).await;
    assert!(get_account(&bob).await.unwrap().contact_ids.is_empty());
}
