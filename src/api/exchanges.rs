//! ExchangeService.

use tonic::{Request, Response, Status};

use super::{Api, caller, request_authority, timestamp};
use crate::{
    domain::{ExchangeToken, UserId, exchanges},
    pb,
};

#[tonic::async_trait]
impl pb::exchange_service_server::ExchangeService for Api {
    async fn create_exchange(
        &self,
        request: Request<pb::CreateExchangeRequest>,
    ) -> Result<Response<pb::CreateExchangeResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let base = exchanges::public_base(&s.config, request_authority(&request));
        let created = exchanges::create(
            &s.store,
            &s.config,
            &caller,
            &request.get_ref().offer,
            &base,
            s.clock.now(),
        )
        .await?;
        Ok(Response::new(pb::CreateExchangeResponse {
            token: created.token.to_string(),
            accept_url: created.accept_url,
            expires_at: Some(timestamp(created.expires_at)),
        }))
    }

    async fn get_exchange(
        &self,
        request: Request<pb::GetExchangeRequest>,
    ) -> Result<Response<pb::GetExchangeResponse>, Status> {
        let caller = caller(&request)?;
        let token = ExchangeToken::parse(&request.get_ref().token)?;
        let s = &self.0;
        let exchange = exchanges::get(&s.store, &caller, &token, s.clock.now()).await?;
        let (state, answer) = match exchange.state {
            exchanges::State::Initiated => (pb::ExchangeState::Initiated, None),
            exchanges::State::Accepted { answer } => (pb::ExchangeState::Accepted, answer),
        };
        Ok(Response::new(pb::GetExchangeResponse {
            state: state.into(),
            expires_at: Some(timestamp(exchange.expires_at)),
            answer,
        }))
    }

    async fn revoke_exchange(
        &self,
        request: Request<pb::RevokeExchangeRequest>,
    ) -> Result<Response<pb::RevokeExchangeResponse>, Status> {
        let caller = caller(&request)?;
        let token = ExchangeToken::parse(&request.get_ref().token)?;
        exchanges::revoke(&self.0.store, &caller, &token).await?;
        Ok(Response::new(pb::RevokeExchangeResponse {}))
    }

    async fn accept_exchange(
        &self,
        request: Request<pb::AcceptExchangeRequest>,
    ) -> Result<Response<pb::AcceptExchangeResponse>, Status> {
        let req = request.into_inner();
        let token = ExchangeToken::parse(&req.token)?;
        let sign_up = req.user_id.as_deref().map(UserId::parse).transpose()?;
        let s = &self.0;
        let accepted = exchanges::accept(
            &s.store,
            &s.config,
            &token,
            req.answer.as_deref(),
            sign_up.as_ref(),
            s.clock.now(),
        )
        .await?;
        let sign_up = match accepted.account_created {
            None => pb::SignUpResult::NotRequested,
            Some(true) => pb::SignUpResult::Created,
            Some(false) => pb::SignUpResult::AlreadyRegistered,
        };
        Ok(Response::new(pb::AcceptExchangeResponse {
            offer: accepted.offer,
            expires_at: Some(timestamp(accepted.expires_at)),
            sign_up: sign_up.into(),
        }))
    }
}
