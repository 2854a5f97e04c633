//! Federation, end to end: Alice (registered on server A) sends a parcel to
//! Bob (registered on server B) by talking to B, after the two swapped
//! contact cards through an exchange on A — the flow of SPEC §1 and §3.
//!
//! ```text
//! cargo run --example federation --no-default-features --features client -- \
//!     --server-a http://127.0.0.1:8081 --invite-a '<sign-up invite link printed by A>' \
//!     --server-b http://127.0.0.1:8082 --invite-b '<sign-up invite link printed by B>'
//! ```
//!
//! Keys: `PIQCHAT_ALICE_KEY` / `PIQCHAT_BOB_KEY` (32-byte secrets, unpadded
//! base64url) reuse existing users; without them fresh keys are made. An
//! `--invite-*` signs that user up first; leave it out for a user who is
//! already registered. `--message` is sent as the attachment, `--content` as
//! Bob's per-recipient content. The real app encrypts cards, attachment and
//! content; the server never reads them, so this example sends them as given.
//!
//! Only the `client` feature is needed: no database, no server code.

use std::{env, error::Error, process::ExitCode};

use piqchat_inbox::{
    client::{self, InviteLink, RequestSigner, SignedChannel, UserKey},
    pb::{
        self, account_service_client::AccountServiceClient,
        exchange_service_client::ExchangeServiceClient, parcel_service_client::ParcelServiceClient,
    },
};
use serde_json::json;

type Result<T, E = Box<dyn Error>> = std::result::Result<T, E>;

const USAGE: &str = "usage: federation --server-a URL --server-b URL [--invite-a LINK] [--invite-b LINK] \
[--message TEXT] [--content TEXT]   (keys from PIQCHAT_ALICE_KEY / PIQCHAT_BOB_KEY, else generated)";

pub struct Args {
    pub server_a: String,
    pub server_b: String,
    pub invite_a: Option<String>,
    pub invite_b: Option<String>,
    pub message: String,
    pub content: String,
}

/// Parses the command line (without the program name).
pub fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut server_a = None;
    let mut server_b = None;
    let mut invite_a = None;
    let mut invite_b = None;
    let mut message = "hello from server A".to_owned();
    let mut content = "key material for Bob".to_owned();
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--server-a" => server_a = Some(value),
            "--server-b" => server_b = Some(value),
            "--invite-a" => invite_a = Some(value),
            "--invite-b" => invite_b = Some(value),
            "--message" => message = value,
            "--content" => content = value,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Args {
        server_a: server_a.ok_or_else(|| format!("--server-a is required\n{USAGE}"))?,
        server_b: server_b.ok_or_else(|| format!("--server-b is required\n{USAGE}"))?,
        invite_a,
        invite_b,
        message,
        content,
    })
}

fn key_from_env(var: &str) -> Result<UserKey> {
    match env::var(var) {
        Ok(secret) => UserKey::from_base64url(&secret).map_err(|e| format!("{var}: {e}").into()),
        Err(_) => Ok(UserKey::generate()),
    }
}

/// A user's contact card: who they are and which server receives for them.
fn card(server: &str, key: &UserKey) -> String {
    json!({ "server": server, "user_id": key.user_id().to_string() }).to_string()
}

/// Reads a card back: (server URL, user id).
fn read_card(text: &str) -> Result<(String, String)> {
    let card: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not a contact card: {e}"))?;
    match (card["server"].as_str(), card["user_id"].as_str()) {
        (Some(server), Some(user)) => Ok((server.to_owned(), user.to_owned())),
        _ => Err("a contact card needs `server` and `user_id`".into()),
    }
}

/// A signed channel from `key` to the server at `url`: the signature's `tag`
/// is that server's public key, so it is valid there and nowhere else.
async fn signed(url: &str, key: &UserKey) -> Result<SignedChannel> {
    let signer = RequestSigner::new(key.clone(), client::server_key(url).await?);
    Ok(client::connect(url, signer).await?)
}

/// Signs `key` up on the server at `url` through a sign-up invite link.
async fn sign_up(url: &str, link: &str, key: &UserKey) -> Result<pb::SignUpResult> {
    let invite = InviteLink::parse(link).map_err(|e| format!("invite link: {e}"))?;
    let reply = ExchangeServiceClient::new(client::connect_anonymous(url).await?)
        .accept_exchange(pb::AcceptExchangeRequest {
            token: invite.token.to_string(),
            answer: None,
            user_id: Some(key.user_id().to_string()),
        })
        .await?
        .into_inner();
    Ok(reply.sign_up())
}

fn short(id: &str) -> &str {
    id.get(..6).unwrap_or(id)
}

/// Runs the whole flow; returns the id of the parcel Bob received.
/// (tests/it/federation_example.rs runs this against two servers.)
pub async fn run(args: Args, alice: UserKey, bob: UserKey) -> Result<String> {
    let (a, b) = (
        args.server_a.trim_end_matches('/'),
        args.server_b.trim_end_matches('/'),
    );
    let alice_id = alice.user_id().to_string();
    let bob_id = bob.user_id().to_string();
    println!("alice {}… receives on A ({a})", short(&alice_id));
    println!("bob   {}… receives on B ({b})", short(&bob_id));

    if let Some(link) = &args.invite_a {
        println!("alice signs up on A: {:?}", sign_up(a, link, &alice).await?);
    }
    if let Some(link) = &args.invite_b {
        println!("bob signs up on B: {:?}", sign_up(b, link, &bob).await?);
    }

    // Alice opens an exchange on her server; her card is the offer.
    let created = ExchangeServiceClient::new(signed(a, &alice).await?)
        .create_exchange(pb::CreateExchangeRequest {
            offer: card(a, &alice),
        })
        .await?
        .into_inner();
    println!(
        "alice created an exchange on A; its accept URL: {}",
        created.accept_url
    );

    // Bob accepts it on A (a public call: the token is the credential) with
    // his card as the answer, and learns Alice's card from the offer.
    let accepted = ExchangeServiceClient::new(client::connect_anonymous(a).await?)
        .accept_exchange(pb::AcceptExchangeRequest {
            token: created.token.clone(),
            answer: Some(card(b, &bob)),
            user_id: None,
        })
        .await?
        .into_inner();
    let (alice_server, alice_seen) = read_card(&accepted.offer)?;
    println!(
        "bob accepted on A; the offer says alice {}… receives on {alice_server}",
        short(&alice_seen)
    );

    // Bob lets Alice send to him: his whitelist lives on his own server.
    let contacts = AccountServiceClient::new(signed(b, &bob).await?)
        .set_contacts(pb::SetContactsRequest {
            contact_ids: vec![alice_seen],
        })
        .await?
        .into_inner();
    println!("bob's contacts on B: {}", contacts.contact_count);

    // Alice reads Bob's answer on A: his id and his server.
    let exchange = ExchangeServiceClient::new(signed(a, &alice).await?)
        .get_exchange(pb::GetExchangeRequest {
            token: created.token,
        })
        .await?
        .into_inner();
    let answer = exchange
        .answer
        .ok_or("the exchange has no answer although it was accepted")?;
    let (bob_server, bob_seen) = read_card(&answer)?;
    println!(
        "alice read the answer on A: bob {}… receives on {bob_server}",
        short(&bob_seen)
    );

    // The federation step: Alice, who has no account on B, sends to Bob by
    // talking to B, signing for B.
    let mut to_b = ParcelServiceClient::new(signed(&bob_server, &alice).await?);
    let accepted = to_b
        .check_acceptance(pb::CheckAcceptanceRequest {
            recipient_id: bob_seen.clone(),
        })
        .await?
        .into_inner()
        .accepted;
    println!("B says bob accepts alice: {accepted}");
    let sent = to_b
        .send_parcel(pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients: vec![pb::ParcelRecipient {
                user_id: bob_seen.clone(),
                content: args.content.clone(),
            }],
            attachment: Some(args.message.clone().into_bytes()),
        })
        .await?
        .into_inner();
    if sent.delivered_recipient_ids != [bob_seen.clone()] {
        return Err(format!(
            "B did not deliver to bob: delivered {}, forbidden {}",
            sent.delivered_recipient_ids.len(),
            sent.forbidden_recipient_ids.len()
        )
        .into());
    }
    println!(
        "alice sent a MEDIA parcel with {} bytes to bob on B",
        args.message.len()
    );

    // Bob lists his inbox on B and downloads the attachment.
    let mut inbox = ParcelServiceClient::new(signed(b, &bob).await?);
    let parcels = inbox
        .list_parcels(pb::ListParcelsRequest::default())
        .await?
        .into_inner()
        .parcels;
    let parcel = parcels
        .iter()
        .rev()
        .find(|p| p.sender_id == alice_id && p.content == args.content)
        .ok_or("the parcel is not in bob's inbox on B")?;
    let mut stream = inbox
        .download_attachment(pb::DownloadAttachmentRequest {
            parcel_id: parcel.id.clone(),
        })
        .await?
        .into_inner();
    let mut attachment = Vec::new();
    while let Some(chunk) = stream.message().await? {
        attachment.extend_from_slice(&chunk.chunk);
    }
    if attachment != args.message.as_bytes() {
        return Err("the downloaded attachment differs from what alice sent".into());
    }
    println!(
        "bob received parcel {}… from alice {}… on B: type {}, content {:?}, attachment {:?}",
        short(&parcel.id),
        short(&parcel.sender_id),
        parcel.r#type,
        parcel.content,
        String::from_utf8_lossy(&attachment)
    );
    Ok(parcel.id.clone())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let keys =
        key_from_env("PIQCHAT_ALICE_KEY").and_then(|a| Ok((a, key_from_env("PIQCHAT_BOB_KEY")?)));
    let result = match keys {
        Ok((alice, bob)) => run(args, alice, bob).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("federation example failed: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                message.push_str(&format!(": {c}"));
                cause = c.source();
            }
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}
