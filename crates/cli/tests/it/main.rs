//! Integration tests: real `ferry` processes on 127.0.0.1, ephemeral ports.

mod support;

mod chunks;
mod config;
mod crash;
mod diskfull;
mod download;
mod durability;
mod faults;
mod hostile;
mod ietf;
mod interop;
mod parallel;
mod proto_client;
mod tus_core;
mod tus_ext;
mod upload;
