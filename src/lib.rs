pub mod pb {
    tonic::include_proto!("piqchat.inbox.v1");
}
