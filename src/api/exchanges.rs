//! ExchangeService.

use super::Api;
use crate::pb;

#[tonic::async_trait]
impl pb::exchange_service_server::ExchangeService for Api {}
