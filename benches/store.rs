//! `Store::insert_parcels`: the transaction one send commits (quota check,
//! attachment row, parcel rows, daily statistics), with the durability the
//! server runs with (WAL, synchronous=FULL: every commit is an fsync).
//! Compare with the disk's fsync rate (`piqchat-load fsync`).

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use piqchat_inbox::{
    client::UserKey,
    clock::{Clock, HOUR},
    domain::{AttachmentId, ExchangeToken, ParcelId, UserId},
    store::{NewParcel, NewParcels, Store},
};

const USERS: usize = 1000;

fn store(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt
        .block_on(Store::open(&dir.path().join("inbox.sqlite")))
        .expect("store");
    let clock = Clock::system();
    // Recipients sign up as on the server: an invite accepted with a user id.
    let recipients: Vec<i64> = rt.block_on(async {
        let mut ids = Vec::with_capacity(USERS);
        for _ in 0..USERS {
            let now = clock.now();
            let token = ExchangeToken::random();
            store
                .insert_exchange(&token, None, "", now, now + HOUR)
                .await
                .expect("invite");
            let user = UserKey::generate().user_id();
            store
                .accept_exchange(&token, None, Some(&user), now)
                .await
                .expect("sign-up");
            ids.push(
                store
                    .user_by_key(&user)
                    .await
                    .expect("query")
                    .expect("user")
                    .entry_id,
            );
        }
        ids
    });
    let sender: UserId = UserKey::generate().user_id();
    let content = "k".repeat(160);

    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    for (name, per_send, attachment) in [
        ("insert_parcels_1_recipient", 1usize, false),
        ("insert_parcels_1_recipient_attachment", 1, true),
        ("insert_parcels_10_recipients_attachment", 10, true),
    ] {
        let mut next = 0usize;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let first = next;
                    next += per_send;
                    first
                },
                |first| {
                    let new = NewParcels {
                        sender,
                        kind: "MEDIA".into(),
                        attachment: attachment.then(|| (AttachmentId::random(), 102_400)),
                        parcels: (0..per_send)
                            .map(|k| NewParcel {
                                id: ParcelId::random(),
                                recipient: recipients[(first + k) % USERS],
                                content: content.clone(),
                            })
                            .collect(),
                        now: clock.now(),
                        max_waiting_parcels: u32::MAX,
                        max_waiting_attachment_bytes: u64::MAX,
                        push: None,
                    };
                    rt.block_on(store.insert_parcels(new))
                        .expect("insert")
                        .expect("within quota")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
    rt.block_on(store.close());
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = store
}
criterion_main!(benches);
