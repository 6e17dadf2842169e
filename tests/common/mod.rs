//! What the end-to-end tests share: a test token server, a manager for it, and a real HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{ClientCredentials, RetryPolicy, TokenManager, TokenManagerBuilder};
use tokenwarden_testkit::TestServer;

pub const CLIENT: &str = "billing";
pub const SECRET: &str = "billing-secret";

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub async fn server() -> TestServer {
    TestServer::builder()
        .client(CLIENT, SECRET)
        .start()
        .await
        .expect("test server starts")
}

pub fn credentials(server: &TestServer) -> ClientCredentials {
    ClientCredentials::builder(&server.token_endpoint(), CLIENT)
        .client_secret(SECRET)
        .build()
        .expect("valid client")
}

/// A manager for the test server's client, retries without waiting long.
pub fn manager_builder(server: &TestServer) -> TokenManagerBuilder {
    TokenManager::builder()
        .client(CLIENT, credentials(server))
        .retry(RetryPolicy::new(2).base_delay(Duration::from_millis(5)))
}

pub fn manager(server: &TestServer) -> TokenManager {
    manager_builder(server).build().expect("manager builds")
}

pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}
