//! BackupService.

use super::Api;
use crate::pb;

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for Api {}
