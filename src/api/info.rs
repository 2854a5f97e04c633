//! InfoService: public server facts.

use tonic::{Request, Response, Status};

use super::Api;
use crate::{domain::info, pb};

#[tonic::async_trait]
impl pb::info_service_server::InfoService for Api {
    async fn get_info(
        &self,
        _request: Request<pb::GetInfoRequest>,
    ) -> Result<Response<pb::GetInfoResponse>, Status> {
        let s = &self.0;
        let i =
            info::server_info(&s.config, &s.identity, &s.store, &s.stats, s.clock.now()).await?;
        Ok(Response::new(pb::GetInfoResponse {
            server_public_key: i.server_public_key,
            vapid_public_key: i.vapid_public_key,
            admin_display_name: i.admin_display_name,
            admin_message: i.admin_message,
            admin_id: i.admin_id,
            privacy_policy_url: i.privacy_policy_url,
            limits: Some(pb::Limits {
                max_attachment_bytes: i.limits.max_attachment_bytes,
                max_content_bytes: i.limits.max_content_bytes,
                max_recipients: i.limits.max_recipients,
                max_exchange_card_bytes: i.limits.max_exchange_card_bytes,
                max_backup_bytes: i.limits.max_backup_bytes,
                max_contacts: i.limits.max_contacts,
                exchange_lifetime_seconds: i.exchange_lifetime_secs,
                signature_max_skew_seconds: i.signature_max_skew_secs,
            }),
            statistics: Some(pb::Statistics {
                users_total: i.statistics.users_total,
                users_active_7d: i.statistics.users_active_7d,
                users_active_30d: i.statistics.users_active_30d,
                media_parcels_waiting: i.statistics.media_parcels_waiting,
                media_parcels_received_7d: i.statistics.media_parcels_received_7d,
            }),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            push_enabled: i.push_enabled,
        }))
    }
}
