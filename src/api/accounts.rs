//! AccountService.

use tonic::{Request, Response, Status};

use super::{Api, caller, parcels::last_seen, timestamp};
use crate::{
    domain::{UserId, accounts},
    pb,
};

#[tonic::async_trait]
impl pb::account_service_server::AccountService for Api {
    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let account = accounts::get_account(&s.store, &s.config, &caller).await?;
        Ok(Response::new(pb::GetAccountResponse {
            user_id: account.user_id.to_string(),
            created_at: Some(timestamp(account.created_at)),
            push_subscribed: account.push_subscribed,
            contact_ids: account.contacts.iter().map(ToString::to_string).collect(),
            is_admin: account.is_admin,
        }))
    }

    async fn set_contacts(
        &self,
        request: Request<pb::SetContactsRequest>,
    ) -> Result<Response<pb::SetContactsResponse>, Status> {
        let caller = caller(&request)?;
        let contacts = request
            .into_inner()
            .contact_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                UserId::parse(id)
                    .map_err(|e| Status::invalid_argument(format!("contact_ids[{i}]: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let s = &self.0;
        let contact_count = accounts::set_contacts(&s.store, &s.config, &caller, contacts).await?;
        Ok(Response::new(pb::SetContactsResponse { contact_count }))
    }

    async fn list_invited_users(
        &self,
        request: Request<pb::ListInvitedUsersRequest>,
    ) -> Result<Response<pb::ListInvitedUsersResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let users = accounts::invited_users(&s.store, &s.config, &caller, s.clock.now()).await?;
        Ok(Response::new(pb::ListInvitedUsersResponse {
            users: users
                .into_iter()
                .map(|u| pb::InvitedUser {
                    user_id: u.user_id.map(|id| id.to_string()).unwrap_or_default(),
                    entry_id: entry(u.entry_id),
                    invited_by_entry_id: u.invited_by.map(entry),
                    last_seen: last_seen(u.last_seen).into(),
                    client_version: u.client_version,
                })
                .collect(),
        }))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let deleted = accounts::delete_account(&s.store, &s.blobs, &caller, s.clock.now()).await?;
        s.metrics.parcel_deleted("account", deleted.parcels);
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }

    async fn set_push_subscription(
        &self,
        request: Request<pb::SetPushSubscriptionRequest>,
    ) -> Result<Response<pb::SetPushSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let keys = req.keys.unwrap_or_default();
        let sub = accounts::NewPushSubscription {
            endpoint: req.endpoint,
            expiration_time: req.expiration_time,
            p256dh: keys.p256dh,
            auth: keys.auth,
            content_encoding: req.content_encoding,
        };
        let s = &self.0;
        accounts::set_push_subscription(&s.store, &s.push_guard, &caller, sub, s.clock.now())
            .await?;
        Ok(Response::new(pb::SetPushSubscriptionResponse {}))
    }

    async fn delete_push_subscription(
        &self,
        request: Request<pb::DeletePushSubscriptionRequest>,
    ) -> Result<Response<pb::DeletePushSubscriptionResponse>, Status> {
        let caller = caller(&request)?;
        accounts::delete_push_subscription(&self.0.store, &caller).await?;
        Ok(Response::new(pb::DeletePushSubscriptionResponse {}))
    }
}

/// Entry ids are SQLite row ids: small and positive.
fn entry(id: i64) -> u32 {
    u32::try_from(id).unwrap_or(u32::MAX)
}
