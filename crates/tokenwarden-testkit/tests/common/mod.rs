//! A plain hyper-util client for the integration tests: form posts with either client
//! authentication method, GETs, and protected API calls.
#![allow(dead_code)] // each test file uses its own part of it
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How a request authenticates its client.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// `client_secret_basic`, form-urlencoded before base64 as RFC 6749 §2.3.1 says.
    Basic(&'a str, &'a str),
    /// `client_secret_post`.
    Post(&'a str, &'a str),
}

pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("{error}: {:?}", self.body))
    }

    /// The `error` of an RFC 6749 §5.2 error response.
    pub(crate) fn error(&self) -> String {
        self.json()["error"].as_str().unwrap().to_owned()
    }

    pub(crate) fn error_description(&self) -> String {
        self.json()["error_description"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A string field of a JSON body.
    pub(crate) fn field(&self, name: &str) -> String {
        self.json()[name]
            .as_str()
            .unwrap_or_else(|| panic!("no string {name} in {}", self.json()))
            .to_owned()
    }
}

#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    pub(crate) fn new() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub(crate) async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = self.client.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// POSTs a form to `url`, authenticated as `auth`.
    pub(crate) async fn post_form(
        &self,
        url: &str,
        auth: Auth<'_>,
        fields: &[(&str, &str)],
    ) -> Reply {
        self.send(form_request(url, auth, fields)).await
    }

    pub(crate) async fn get(&self, url: &str) -> Reply {
        self.send(Request::get(url).body(Full::default()).unwrap())
            .await
    }

    /// GETs a protected API URL with `Authorization: Bearer <token>`.
    pub(crate) async fn call_api(&self, url: &str, token: &str) -> Reply {
        let request = Request::get(url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }
}

/// A form POST authenticated as `auth`; built outside any future, as the form serializer is not
/// `Send`.
fn form_request(url: &str, auth: Auth<'_>, fields: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::post(url).header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    let mut form = form_urlencoded::Serializer::new(String::new());
    match auth {
        Auth::Basic(id, secret) => {
            let encode =
                |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let credentials = BASE64.encode(format!("{}:{}", encode(id), encode(secret)));
            request = request.header(AUTHORIZATION, format!("Basic {credentials}"));
        }
        Auth::Post(id, secret) => {
            form.append_pair("client_id", id)
                .append_pair("client_secret", secret);
        }
    }
    for (key, value) in fields {
        form.append_pair(key, value);
    }
    request.body(Full::from(form.finish())).unwrap()
}
