//! BackupService.

use tonic::{Request, Response, Status};

use super::{Api, caller, timestamp};
use crate::{domain::accounts, pb};

#[tonic::async_trait]
impl pb::backup_service_server::BackupService for Api {
    async fn put_backup(
        &self,
        request: Request<pb::PutBackupRequest>,
    ) -> Result<Response<pb::PutBackupResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let at = accounts::put_backup(
            &s.store,
            &s.config,
            &caller,
            &request.get_ref().content,
            s.clock.now(),
        )
        .await?;
        Ok(Response::new(pb::PutBackupResponse {
            updated_at: Some(timestamp(at)),
        }))
    }

    async fn get_backup(
        &self,
        request: Request<pb::GetBackupRequest>,
    ) -> Result<Response<pb::GetBackupResponse>, Status> {
        let caller = caller(&request)?;
        let s = &self.0;
        let backup = accounts::get_backup(&s.store, &caller, s.clock.now()).await?;
        Ok(Response::new(pb::GetBackupResponse {
            content: backup.content,
            updated_at: Some(timestamp(backup.updated_at)),
            last_read_at: backup.last_read_at.map(timestamp),
        }))
    }
}
