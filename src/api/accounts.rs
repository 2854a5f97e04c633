//! AccountService.

use tonic::{Request, Response, Status};

use super::{Api, caller, timestamp};
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
}
