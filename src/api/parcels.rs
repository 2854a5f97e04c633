//! ParcelService.

use super::Api;
use crate::pb;

#[tonic::async_trait]
impl pb::parcel_service_server::ParcelService for Api {}
