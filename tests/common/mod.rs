//! What the end-to-end tests share: a test token server, a manager for it, and a real HTTP client.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokenwarden::{
    ClientConfig, ClientCredentials, RetryPolicy, TokenManager, TokenManagerBuilder,
};
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

/// The test server's client as the server knows it: its token endpoint, id and secret.
pub fn client_config(server: &TestServer) -> ClientConfig {
    ClientConfig::builder(&server.token_endpoint(), CLIENT)
        .client_secret(SECRET)
        .build()
        .expect("valid client")
}

/// The client-credentials grant of the test server's client, with the server's default scope.
pub fn credentials(server: &TestServer) -> ClientCredentials {
    ClientCredentials::new(client_config(server))
}

/// An error and every cause below it on one line, as a log line would show it: a
/// `tokenwarden::Error` says what failed, its `source()` chain says why.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
