//! AccountService.

use tonic::{Request, Response, Status};

use super::{Api, caller, timestamp};
use crate::{domain::accounts, pb};

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
}
