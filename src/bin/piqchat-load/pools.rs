//! Setup through the public API: users, sign-up, contacts, the waiting
//! parcels, and the requests each scenario sends.

use std::path::Path;

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use http::Method;
use piqchat_inbox::{
    client::{self, RequestSigner, SignedChannel, UserKey},
    clock::Clock,
    config::Config,
    domain::{ExchangeToken, UserId, exchanges},
    pb,
    store::{DatabaseTarget, PgTarget, Store},
};

use crate::protocols::{
    Call, EXCHANGES_CREATE, INFO_GET, Op, PARCELS_DOWNLOAD, PARCELS_LIST, PARCELS_SEND,
};
use crate::{Protocol, RunArgs, Scenario, is_local_host};

/// The server under test and a registered user who invites the others.
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) tag: String,
    pub(crate) inviter: Option<Inviter>,
}

pub(crate) struct Inviter {
    pub(crate) exchanges: pb::exchange_service_client::ExchangeServiceClient<SignedChannel>,
}

/// The exchange token inside an invite link or accept URL.
pub(crate) fn token_of_link(link: &str) -> anyhow::Result<ExchangeToken> {
    let decoded = percent_encoding::percent_decode_str(link).decode_utf8_lossy();
    let at = decoded
        .find("/v1/exchanges/")
        .context("the invite has no accept URL (/v1/exchanges/<token>)")?
        + "/v1/exchanges/".len();
    let token = decoded
        .get(at..at + 36)
        .context("the invite's token is cut short")?;
    ExchangeToken::parse(token).map_err(|e| anyhow::anyhow!("invite token: {e}"))
}

/// --database as the project's store names it: a postgres:// URL (loopback
/// only, like the servers) or a SQLite file.
pub(crate) fn database_target(arg: &str) -> anyhow::Result<DatabaseTarget> {
    if !(arg.starts_with("postgres://") || arg.starts_with("postgresql://")) {
        return Ok(DatabaseTarget::Sqlite(arg.into()));
    }
    let target = PgTarget::parse(arg).map_err(|e| anyhow::anyhow!("--database: {e}"))?;
    let host = target.connect_options().get_host().to_owned();
    if !is_local_host(&host) {
        bail!(
            "--database must be a PostgreSQL server on this machine (loopback or a Unix socket), not {host:?}"
        );
    }
    Ok(DatabaseTarget::Postgres(Box::new(target)))
}

impl Server {
    pub(crate) async fn connect(url: &str) -> anyhow::Result<Self> {
        let channel = client::connect_anonymous(url)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let info = pb::info_service_client::InfoServiceClient::new(channel)
            .get_info(pb::GetInfoRequest {})
            .await
            .context("GetInfo")?
            .into_inner();
        Ok(Server {
            url: url.to_owned(),
            tag: info.server_public_key,
            inviter: None,
        })
    }

    pub(crate) fn signer(&self, key: &UserKey) -> RequestSigner {
        RequestSigner::new(key.clone(), self.tag.clone())
    }

    pub(crate) async fn channel(&self, key: &UserKey) -> anyhow::Result<SignedChannel> {
        Ok(client::connect(&self.url, self.signer(key)).await?)
    }

    pub(crate) async fn accept_sign_up(&self, token: &str, user: &UserKey) -> anyhow::Result<()> {
        let channel = client::connect_anonymous(&self.url).await?;
        let reply = pb::exchange_service_client::ExchangeServiceClient::new(channel)
            .accept_exchange(pb::AcceptExchangeRequest {
                token: token.to_owned(),
                answer: None,
                user_id: Some(user.user_id().to_string()),
            })
            .await
            .context("accepting a sign-up invite")?
            .into_inner();
        if reply.sign_up() != pb::SignUpResult::Created {
            bail!("sign-up did not create an account: {:?}", reply.sign_up());
        }
        Ok(())
    }

    /// Signs up the inviter with the given invite or one made in the database.
    pub(crate) async fn bootstrap(&mut self, args: &RunArgs) -> anyhow::Result<()> {
        let token = match (&args.invite, &args.database) {
            (Some(link), _) => token_of_link(link)?,
            (None, Some(db)) => {
                let target = database_target(db)?;
                // One connection is plenty for one insert.
                let store = Store::connect(&target, 1)
                    .await
                    .with_context(|| format!("opening the database {target:?}"))?;
                let dir = match &target {
                    DatabaseTarget::Sqlite(path) => path.parent().unwrap_or(Path::new(".")),
                    DatabaseTarget::Postgres(_) => Path::new("."),
                };
                let link = exchanges::create_sign_up_invite(
                    &store,
                    &Config::for_dir(dir),
                    Clock::system().now(),
                )
                .await?;
                store.close().await;
                token_of_link(&link)?
            }
            (None, None) => bail!(
                "this scenario registers users: give --invite <link> (from `piqchat-inbox invite`) or --database <the server's SQLite file or postgres:// URL>"
            ),
        };
        let key = UserKey::generate();
        self.accept_sign_up(&token.to_string(), &key)
            .await
            .context("signing up the setup's first user (is the invite fresh?)")?;
        self.inviter = Some(Inviter {
            exchanges: pb::exchange_service_client::ExchangeServiceClient::new(
                self.channel(&key).await?,
            ),
        });
        Ok(())
    }

    /// A new registered user: the inviter creates an exchange, the new user
    /// accepts it with its user id, as the app does.
    pub(crate) async fn register(&mut self) -> anyhow::Result<UserKey> {
        let inviter = self.inviter.as_mut().context("no inviter")?;
        let created = inviter
            .exchanges
            .create_exchange(pb::CreateExchangeRequest {
                offer: card("inviter"),
            })
            .await
            .context("creating an invite")?
            .into_inner();
        let key = UserKey::generate();
        self.accept_sign_up(&created.token, &key).await?;
        Ok(key)
    }

    pub(crate) async fn set_contacts(
        &self,
        user: &UserKey,
        contacts: &[UserId],
    ) -> anyhow::Result<()> {
        pb::account_service_client::AccountServiceClient::new(self.channel(user).await?)
            .set_contacts(pb::SetContactsRequest {
                contact_ids: contacts.iter().map(ToString::to_string).collect(),
            })
            .await
            .context("setting contacts")?;
        Ok(())
    }

    pub(crate) async fn parcels(
        &self,
        user: &UserKey,
    ) -> anyhow::Result<pb::parcel_service_client::ParcelServiceClient<SignedChannel>> {
        Ok(
            pb::parcel_service_client::ParcelServiceClient::new(self.channel(user).await?)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        )
    }

    /// Sends `count` small parcels from `sender` to each of `recipients`
    /// (up to 100 recipients per send).
    pub(crate) async fn fill_inboxes(
        &self,
        sender: &UserKey,
        recipients: &[UserKey],
        count: usize,
    ) -> anyhow::Result<()> {
        let mut parcels = self.parcels(sender).await?;
        for _ in 0..count {
            for group in recipients.chunks(100) {
                parcels
                    .send_parcel(pb::SendParcelRequest {
                        r#type: "MEDIA".into(),
                        recipients: group
                            .iter()
                            .map(|r| pb::ParcelRecipient {
                                user_id: r.user_id().to_string(),
                                content: card("key"),
                            })
                            .collect(),
                        attachment: None,
                    })
                    .await
                    .context("sending the parcels to list")?;
            }
        }
        Ok(())
    }

    /// Registers `n` users who all accept `sender`.
    pub(crate) async fn recipients(
        &mut self,
        n: usize,
        sender: &UserKey,
    ) -> anyhow::Result<Vec<UserKey>> {
        let mut users = Vec::with_capacity(n);
        for _ in 0..n {
            let user = self.register().await?;
            self.set_contacts(&user, &[sender.user_id()]).await?;
            users.push(user);
        }
        Ok(users)
    }
}

/// An opaque stand-in for an encrypted card or key material.
pub(crate) fn card(seed: &str) -> String {
    let random = piqchat_inbox::identity::random_bytes::<96>();
    format!(
        "{seed}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    )
}

pub(crate) fn attachment(len: usize) -> Vec<u8> {
    // Ciphertext does not compress; neither does this.
    let mut data = Vec::with_capacity(len);
    while data.len() < len {
        data.extend_from_slice(&piqchat_inbox::identity::random_bytes::<32>());
    }
    data.truncate(len);
    data
}

pub(crate) fn send_call(recipients: &[UserKey], data: &[u8]) -> Call {
    let recipients: Vec<pb::ParcelRecipient> = recipients
        .iter()
        .map(|r| pb::ParcelRecipient {
            user_id: r.user_id().to_string(),
            content: card("key"),
        })
        .collect();
    let json = serde_json::json!({
        "type": "MEDIA",
        "recipients": recipients
            .iter()
            .map(|r| serde_json::json!({ "userId": r.user_id, "content": r.content }))
            .collect::<Vec<_>>(),
        "attachment": STANDARD.encode(data),
    });
    Call::new(
        PARCELS_SEND,
        &pb::SendParcelRequest {
            r#type: "MEDIA".into(),
            recipients,
            attachment: Some(data.to_vec()),
        },
        Method::POST,
        "/v1/parcels",
        Some(json),
    )
}

pub(crate) fn list_call() -> Call {
    Call::new(
        PARCELS_LIST,
        &pb::ListParcelsRequest::default(),
        Method::GET,
        "/v1/parcels",
        None,
    )
}

pub(crate) fn info_call() -> Call {
    Call::new(
        INFO_GET,
        &pb::GetInfoRequest {},
        Method::GET,
        "/v1/info",
        None,
    )
}

pub(crate) fn create_call(offer: &str) -> Call {
    Call::new(
        EXCHANGES_CREATE,
        &pb::CreateExchangeRequest {
            offer: offer.to_owned(),
        },
        Method::POST,
        "/v1/exchanges",
        Some(serde_json::json!({ "offer": offer })),
    )
}

/// The peer's unsigned `GET <prefix>/info` (the peer speaks only JSON).
pub(crate) fn peer_info_call(prefix: &str) -> Call {
    let path = format!("{}/info", prefix.trim_end_matches('/'));
    Call::new(INFO_GET, &pb::GetInfoRequest {}, Method::GET, path, None)
}

/// Per-connection ops against the original Node server (--peer). Its signed
/// calls need its own scheme (a NaCl box of X-Date from the user's key to
/// the server's), which this generator does not make.
pub(crate) fn peer_setup(
    args: &RunArgs,
    scenario: Scenario,
) -> anyhow::Result<Vec<(Op, Option<RequestSigner>)>> {
    if args.protocol != Protocol::Json {
        bail!("the Node peer speaks only JSON: use --protocol json with --peer");
    }
    if !(args.peer_prefix.is_empty() || args.peer_prefix.starts_with('/')) {
        bail!("--peer-prefix must start with / (or be empty)");
    }
    match scenario {
        Scenario::Info => Ok((0..args.concurrency)
            .map(|_| {
                (
                    Op::Single {
                        call: peer_info_call(&args.peer_prefix),
                        signed: false,
                    },
                    None,
                )
            })
            .collect()),
        other => bail!(
            "against the Node peer only `info` is implemented; {} needs its NaCl-box signatures",
            other.name()
        ),
    }
}

/// Per-connection (op, signer) pairs, after the scenario's setup; `backlog`
/// is the recipient `seed-backlog` made (the backlog scenario).
pub(crate) async fn setup(
    server: &mut Server,
    args: &RunArgs,
    scenario: Scenario,
    backlog: Option<UserKey>,
) -> anyhow::Result<Vec<(Op, Option<RequestSigner>)>> {
    let c = args.concurrency;
    let unsigned = |call: Call| {
        (
            Op::Single {
                call,
                signed: false,
            },
            None,
        )
    };
    match scenario {
        Scenario::Info | Scenario::InfoBig => Ok((0..c).map(|_| unsigned(info_call())).collect()),
        Scenario::List | Scenario::ListBig => {
            // One recipient per connection, each with 20 waiting parcels
            // from one sender (sent 20 times to up to 100 recipients at once).
            server.bootstrap(args).await?;
            let sender = UserKey::generate();
            let recipients = server.recipients(c, &sender).await?;
            server.fill_inboxes(&sender, &recipients, 20).await?;
            Ok(recipients
                .iter()
                .map(|r| {
                    (
                        Op::Single {
                            call: list_call(),
                            signed: true,
                        },
                        Some(server.signer(r)),
                    )
                })
                .collect())
        }
        Scenario::Send100k | Scenario::SendGroup => {
            // One sender; each connection sends to its own recipient (or
            // group of 10), so the per-recipient quota lasts the run.
            server.bootstrap(args).await?;
            let per = if scenario == Scenario::SendGroup {
                10
            } else {
                1
            };
            let sender = UserKey::generate();
            let recipients = server.recipients(c * per, &sender).await?;
            let data = attachment(100 * 1024);
            Ok(recipients
                .chunks(per)
                .map(|group| {
                    (
                        Op::Single {
                            call: send_call(group, &data),
                            signed: true,
                        },
                        Some(server.signer(&sender)),
                    )
                })
                .collect())
        }
        Scenario::SendOne | Scenario::Backlog => {
            // One sender, every connection sending into ONE recipient: a new
            // user (send-one) or the seeded one with its backlog.
            let sender = UserKey::generate();
            let recipient = match backlog {
                Some(key) if scenario == Scenario::Backlog => {
                    server.set_contacts(&key, &[sender.user_id()]).await?;
                    key
                }
                _ => {
                    server.bootstrap(args).await?;
                    server
                        .recipients(1, &sender)
                        .await?
                        .pop()
                        .context("one recipient")?
                }
            };
            let call = send_call(std::slice::from_ref(&recipient), &attachment(100 * 1024));
            Ok((0..c)
                .map(|_| {
                    (
                        Op::Single {
                            call: call.clone(),
                            signed: true,
                        },
                        Some(server.signer(&sender)),
                    )
                })
                .collect())
        }
        Scenario::Exchange | Scenario::Accept => {
            server.bootstrap(args).await?;
            let mut ops = Vec::with_capacity(c);
            for _ in 0..c {
                let creator = server.register().await?;
                let create = create_call(&card("offer"));
                let op = if scenario == Scenario::Exchange {
                    Op::Single {
                        call: create,
                        signed: true,
                    }
                } else {
                    Op::CreateAccept {
                        create,
                        answer: card("answer"),
                    }
                };
                ops.push((op, Some(server.signer(&creator))));
            }
            Ok(ops)
        }
        Scenario::Download1m => {
            // One 1 MiB attachment sent once to every connection's recipient
            // (stored once); each downloads its own parcel's copy.
            server.bootstrap(args).await?;
            let sender = UserKey::generate();
            let recipients = server.recipients(c, &sender).await?;
            let data = attachment(1024 * 1024);
            let mut parcels = server.parcels(&sender).await?;
            for group in recipients.chunks(100) {
                parcels
                    .send_parcel(pb::SendParcelRequest {
                        r#type: "MEDIA".into(),
                        recipients: group
                            .iter()
                            .map(|r| pb::ParcelRecipient {
                                user_id: r.user_id().to_string(),
                                content: card("key"),
                            })
                            .collect(),
                        attachment: Some(data.clone()),
                    })
                    .await
                    .context("sending the attachment to download")?;
            }
            let mut ops = Vec::with_capacity(c);
            for r in &recipients {
                let listed = server
                    .parcels(r)
                    .await?
                    .list_parcels(pb::ListParcelsRequest::default())
                    .await?
                    .into_inner();
                let id = listed
                    .parcels
                    .first()
                    .context("the recipient has no parcel")?
                    .id
                    .clone();
                let call = Call::new(
                    PARCELS_DOWNLOAD,
                    &pb::DownloadAttachmentRequest {
                        parcel_id: id.clone(),
                    },
                    Method::GET,
                    format!("/v1/parcels/{id}/attachment"),
                    None,
                )
                .streaming();
                ops.push((Op::Single { call, signed: true }, Some(server.signer(r))));
            }
            Ok(ops)
        }
        Scenario::UnderAttack => bail!("under-attack has a setup of its own"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::Cli;

    #[test]
    fn database_targets_are_local_only() {
        assert!(matches!(
            database_target("/tmp/b/inbox.sqlite").unwrap(),
            DatabaseTarget::Sqlite(p) if p == Path::new("/tmp/b/inbox.sqlite")
        ));
        for local in [
            "postgres://postgres@127.0.0.1:55432/bench",
            "postgresql://u:secret@localhost/bench",
            "postgres://u@[::1]:5432/bench",
        ] {
            let target = database_target(local).unwrap();
            assert!(matches!(target, DatabaseTarget::Postgres(_)), "{local}");
        }
        let remote = database_target("postgres://u:secret@db.example.com/bench")
            .unwrap_err()
            .to_string();
        assert!(remote.contains("this machine"), "{remote}");
        assert!(!remote.contains("secret"), "{remote}");
        let bad = database_target("postgres://u@127.0.0.1:notaport/bench").unwrap_err();
        assert!(bad.to_string().starts_with("--database:"), "{bad}");
    }

    #[test]
    fn also_urls_follow_url_and_must_be_loopback() {
        let cli = Cli::try_parse_from([
            "piqchat-load",
            "--url",
            "http://127.0.0.1:8080/",
            "--also-url",
            "http://127.0.0.1:8081",
            "--server-pid",
            "10",
            "--server-pid",
            "11",
        ])
        .unwrap();
        assert_eq!(
            cli.run.urls().unwrap(),
            ["http://127.0.0.1:8080", "http://127.0.0.1:8081"]
        );
        assert_eq!(cli.run.server_pid, [10, 11]);
        let cli =
            Cli::try_parse_from(["piqchat-load", "--also-url", "http://192.0.2.1:8080"]).unwrap();
        assert!(cli.run.urls().is_err());
    }
}
