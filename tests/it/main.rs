//! Integration tests: the real server on 127.0.0.1:0 with a temp database,
//! driven through real clients (tonic over HTTP/2, gRPC-web and JSON over
//! HTTP/1.1).

mod harness;

mod accounts;
mod auth;
mod blobs;
mod connections;
mod exchanges;
mod faults;
mod federation_example;
mod gateway;
mod info;
mod instances;
mod limits;
mod malformed;
mod nonces;
mod operations;
mod parcels;
mod push;
mod push_service;
mod retention;
mod shutdown;
mod tls;
mod uploads;
