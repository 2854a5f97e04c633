//! ParcelService.

use std::pin::Pin;

use futures_util::Stream;
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status, metadata::MetadataValue};

use super::{Api, caller, client_version, timestamp};
use crate::{
    domain::{ParcelId, UserId, parcels},
    metrics::KindLabels,
    pb,
};

/// Bytes per download chunk.
const CHUNK: usize = 256 * 1024;

type ChunkStream =
    Pin<Box<dyn Stream<Item = Result<pb::DownloadAttachmentResponse, Status>> + Send>>;

pub(super) fn last_seen(l: parcels::LastSeen) -> pb::LastSeen {
    match l {
        parcels::LastSeen::Never => pb::LastSeen::Never,
        parcels::LastSeen::Recently => pb::LastSeen::Recently,
        parcels::LastSeen::WithinWeek => pb::LastSeen::WithinWeek,
        parcels::LastSeen::WithinMonth => pb::LastSeen::WithinMonth,
        parcels::LastSeen::LongTime => pb::LastSeen::LongTime,
    }
}

/// A page token names the last parcel of the previous page by its place in
/// the inbox; clients treat it as opaque.
fn page_token(after: i64) -> String {
    format!("p{after}")
}

fn page(req: &pb::ListParcelsRequest) -> Result<parcels::Page, Status> {
    let size = usize::try_from(req.page_size)
        .map_err(|_| Status::invalid_argument("page_size must not be negative"))?;
    let after = match req.page_token.as_str() {
        "" => None,
        token => Some(
            token
                .strip_prefix('p')
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| {
                    Status::invalid_argument(
                        "page_token is not one this server gave out; pass next_page_token unchanged",
                    )
                })?,
        ),
    };
    Ok(parcels::Page { size, after })
}

#[tonic::async_trait]
impl pb::parcel_service_server::ParcelService for Api {
    type DownloadAttachmentStream = ChunkStream;
    async fn send_parcel(
        &self,
        request: Request<pb::SendParcelRequest>,
    ) -> Result<Response<pb::SendParcelResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let recipients = req
            .recipients
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                UserId::parse(&r.user_id)
                    .map(|id| (id, r.content))
                    .map_err(|e| Status::invalid_argument(format!("recipient {i}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = &self.0;
        let attachment_bytes = req.attachment.as_ref().map_or(0, Vec::len) as u64;
        let ids: Vec<UserId> = recipients.iter().map(|(id, _)| *id).collect();
        let send = parcels::Send {
            kind: req.r#type,
            recipients,
            attachment: req.attachment,
        };
        let kind = parcels::kind_label(&send.kind);
        let sent = parcels::send(
            &s.store,
            &s.blobs,
            &s.config.limits,
            &caller,
            send,
            |accepting| {
                let indexed = accepting
                    .iter()
                    .filter_map(|a| Some((ids.iter().position(|id| id == a)?, *a)));
                s.limits
                    .check_send(&caller.user_id, indexed, attachment_bytes)
                    .map_err(super::limits::Refusal::into_error)
            },
            s.push_ttl(),
            s.clock.now(),
        )
        .await?;
        if sent.pushes_queued {
            s.push_wake.notify_one();
        }
        s.metrics
            .parcels_stored
            .get_or_create(&KindLabels { kind })
            .inc_by(sent.delivered.len() as u64);
        s.metrics.attachment_bytes_stored.inc_by(attachment_bytes);
        Ok(Response::new(pb::SendParcelResponse {
            delivered_recipient_ids: sent.delivered.iter().map(ToString::to_string).collect(),
            forbidden_recipient_ids: sent.forbidden.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn check_acceptance(
        &self,
        request: Request<pb::CheckAcceptanceRequest>,
    ) -> Result<Response<pb::CheckAcceptanceResponse>, Status> {
        let caller = caller(&request)?;
        let recipient = UserId::parse(&request.get_ref().recipient_id)?;
        let accepted = parcels::accepts(&self.0.store, &caller, &recipient).await?;
        Ok(Response::new(pb::CheckAcceptanceResponse { accepted }))
    }

    async fn get_delivery_status(
        &self,
        request: Request<pb::GetDeliveryStatusRequest>,
    ) -> Result<Response<pb::GetDeliveryStatusResponse>, Status> {
        let caller = caller(&request)?;
        let recipient = UserId::parse(&request.get_ref().recipient_id)?;
        let s = &self.0;
        let status = parcels::delivery_status(&s.store, &caller, &recipient, s.clock.now()).await?;
        Ok(Response::new(pb::GetDeliveryStatusResponse {
            waiting_media_parcels: status.waiting_media,
            last_seen: last_seen(status.last_seen).into(),
        }))
    }

    async fn list_parcels(
        &self,
        request: Request<pb::ListParcelsRequest>,
    ) -> Result<Response<pb::ListParcelsResponse>, Status> {
        let caller = caller(&request)?;
        let version = client_version(&request);
        let page = page(request.get_ref())?;
        let s = &self.0;
        let listed =
            parcels::list(&s.store, &caller, version.as_deref(), page, s.clock.now()).await?;
        Ok(Response::new(pb::ListParcelsResponse {
            next_page_token: listed.next_after.map(page_token).unwrap_or_default(),
            parcels: listed
                .parcels
                .into_iter()
                .map(|p| pb::Parcel {
                    id: p.id.to_string(),
                    r#type: p.kind,
                    content: p.content,
                    sender_id: p.sender.to_string(),
                    sent_at: Some(timestamp(p.sent_at)),
                    attachment_size: p.attachment_size.map(|s| s as u32),
                })
                .collect(),
        }))
    }

    async fn download_attachment(
        &self,
        request: Request<pb::DownloadAttachmentRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let caller = caller(&request)?;
        let parcel = ParcelId::parse(&request.get_ref().parcel_id)?;
        let s = &self.0;
        let (file, size) = parcels::open_attachment(&s.store, &s.blobs, &caller, &parcel).await?;
        let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
            let mut buf = Vec::with_capacity(CHUNK);
            let n = (&mut file)
                .take(CHUNK as u64)
                .read_to_end(&mut buf)
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "reading an attachment failed");
                    Status::internal("internal error")
                })?;
            Ok((n > 0).then_some((pb::DownloadAttachmentResponse { chunk: buf }, file)))
        });
        let mut response = Response::new(Box::pin(chunks) as ChunkStream);
        response
            .metadata_mut()
            .insert("x-content-length", MetadataValue::from(size));
        Ok(response)
    }

    async fn delete_parcel(
        &self,
        request: Request<pb::DeleteParcelRequest>,
    ) -> Result<Response<pb::DeleteParcelResponse>, Status> {
        let caller = caller(&request)?;
        let parcel = ParcelId::parse(&request.get_ref().parcel_id)?;
        let s = &self.0;
        parcels::delete(&s.store, &s.blobs, &caller, &parcel).await?;
        s.metrics.parcel_deleted("recipient", 1);
        Ok(Response::new(pb::DeleteParcelResponse {}))
    }
}
