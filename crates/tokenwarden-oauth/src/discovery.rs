//! Authorization server metadata (RFC 8414, OpenID Connect Discovery 1.0): a client configured
//! by issuer learns its token and revocation endpoints from the issuer's well-known document.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::ACCEPT;
use http::{HeaderValue, Method, Request, Uri};
use http_body_util::Full;
use serde_json::Value;

use crate::client::send;
use crate::client_config::check_endpoint;
use crate::transport::Transport;
use crate::{ClientConfig, Error};

/// The metadata a client needs.
#[derive(Debug)]
pub(crate) struct Metadata {
    pub(crate) token_endpoint: Uri,
    pub(crate) revocation_endpoint: Option<Uri>,
}

/// One issuer's metadata, fetched when first needed and kept for a while.
#[derive(Debug)]
pub(crate) struct Discovery {
    issuer: Uri,
    allow_insecure_http: bool,
    ttl: Duration,
    /// The last metadata and when it was fetched. The lock is held across the fetch, so callers
    /// that need the metadata at once share one request.
    state: tokio::sync::Mutex<Option<(Arc<Metadata>, Instant)>>,
}

impl Discovery {
    pub(crate) fn new(issuer: Uri, allow_insecure_http: bool, ttl: Duration) -> Self {
        Discovery {
            issuer,
            allow_insecure_http,
            ttl,
            state: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn issuer(&self) -> &Uri {
        &self.issuer
    }

    /// The metadata: the kept one while it is younger than the TTL, else fetched again. When
    /// fetching again fails, metadata fetched before stays in use (and the next call tries
    /// again); with none, the failure is the answer.
    pub(crate) async fn metadata(
        &self,
        transport: &Transport,
        client: &ClientConfig,
    ) -> Result<Arc<Metadata>, Error> {
        let mut state = self.state.lock().await;
        if let Some((metadata, fetched)) = state.as_ref()
            && fetched.elapsed() < self.ttl
        {
            return Ok(metadata.clone());
        }
        match self.fetch(transport, client).await {
            Ok(metadata) => {
                *state = Some((metadata.clone(), Instant::now()));
                Ok(metadata)
            }
            Err(error) => match state.as_ref() {
                Some((stale, _)) => {
                    tracing::warn!(issuer = %self.issuer, %error, "could not fetch the authorization server's metadata again; using what was fetched before");
                    Ok(stale.clone())
                }
                None => Err(error),
            },
        }
    }

    /// The OpenID Connect document, else the RFC 8414 one.
    async fn fetch(
        &self,
        transport: &Transport,
        client: &ClientConfig,
    ) -> Result<Arc<Metadata>, Error> {
        let oidc = self.well_known_oidc();
        let first = self.fetch_one(transport, client, &oidc).await;
        let document = match first {
            Ok(document) => document,
            Err(first_error) => {
                let oauth = self.well_known_oauth();
                match self.fetch_one(transport, client, &oauth).await {
                    Ok(document) => document,
                    Err(error) => {
                        tracing::debug!(%oidc, error = %first_error, "no OpenID Connect discovery document");
                        return Err(self.error(
                            format!("neither {oidc} nor {oauth} gave the server's metadata"),
                            Some(error),
                        ));
                    }
                }
            }
        };
        self.check(&document).map(Arc::new)
    }

    async fn fetch_one(
        &self,
        transport: &Transport,
        client: &ClientConfig,
        url: &str,
    ) -> Result<Value, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|_| Error::config(format!("{url:?} is not a valid URL")))?;
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Full::new(Bytes::new()))
            .map_err(|_| Error::config("could not build the discovery request"))?;
        let exchange = send(
            transport.clone(),
            request,
            &uri,
            client.max_response_bytes(),
        );
        let (status, _, body) = match tokio::time::timeout(client.timeout(), exchange).await {
            Ok(result) => result?,
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    endpoint: url.to_owned(),
                    after: client.timeout(),
                });
            }
        };
        if !status.is_success() {
            return Err(Error::UnexpectedStatus {
                endpoint: url.to_owned(),
                status,
                retry_after: None,
            });
        }
        serde_json::from_slice(&body)
            .map_err(|_| Error::invalid_response(format!("{url} did not answer with JSON")))
    }

    /// Checks the document the way RFC 8414 §3.3 asks: its `issuer` is the one configured, and
    /// its endpoints are URLs this client may send credentials to.
    fn check(&self, document: &Value) -> Result<Metadata, Error> {
        let text = |name: &str| document.get(name).and_then(Value::as_str);
        let configured = self.issuer.to_string();
        match text("issuer") {
            Some(issuer) if same_issuer(issuer, &configured) => {}
            Some(issuer) => {
                return Err(self.error(
                    format!("the metadata names another issuer, {issuer:?}"),
                    None,
                ));
            }
            None => return Err(self.error("the metadata has no issuer".into(), None)),
        }
        let token = text("token_endpoint")
            .ok_or_else(|| self.error("the metadata has no token_endpoint".into(), None))?;
        let token_endpoint = check_endpoint(
            "the discovered token endpoint",
            token,
            self.allow_insecure_http,
        )
        .map_err(|e| self.error("its token endpoint cannot be used".into(), Some(e)))?;
        let revocation_endpoint = text("revocation_endpoint")
            .map(|r| {
                check_endpoint(
                    "the discovered revocation endpoint",
                    r,
                    self.allow_insecure_http,
                )
            })
            .transpose()
            .map_err(|e| self.error("its revocation endpoint cannot be used".into(), Some(e)))?;
        Ok(Metadata {
            token_endpoint,
            revocation_endpoint,
        })
    }

    /// `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery §4).
    fn well_known_oidc(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.to_string().trim_end_matches('/')
        )
    }

    /// RFC 8414 §3: the well-known path goes between the host and the issuer's path.
    fn well_known_oauth(&self) -> String {
        let path = self.issuer.path().trim_end_matches('/');
        let scheme = self.issuer.scheme_str().unwrap_or("https");
        let authority = self.issuer.authority().map_or("", |a| a.as_str());
        format!("{scheme}://{authority}/.well-known/oauth-authorization-server{path}")
    }

    fn error(&self, problem: String, source: Option<Error>) -> Error {
        Error::Discovery {
            issuer: self.issuer.to_string(),
            problem,
            source: source.map(Box::new),
        }
    }
}

/// Issuers are compared as text (RFC 8414 §3.3), but a URL with an empty path is written with a
/// `/` by `Uri`, so one trailing `/` is not a difference.
fn same_issuer(metadata: &str, configured: &str) -> bool {
    metadata.trim_end_matches('/') == configured.trim_end_matches('/')
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn discovery(issuer: &str) -> Discovery {
        Discovery::new(issuer.parse().unwrap(), false, Duration::from_secs(60))
    }

    #[test]
    fn well_known_urls_follow_both_specifications() {
        let plain = discovery("https://idp.example.com");
        assert_eq!(
            plain.well_known_oidc(),
            "https://idp.example.com/.well-known/openid-configuration"
        );
        assert_eq!(
            plain.well_known_oauth(),
            "https://idp.example.com/.well-known/oauth-authorization-server"
        );
        let tenant = discovery("https://idp.example.com/tenant1/");
        assert_eq!(
            tenant.well_known_oidc(),
            "https://idp.example.com/tenant1/.well-known/openid-configuration"
        );
        assert_eq!(
            tenant.well_known_oauth(),
            "https://idp.example.com/.well-known/oauth-authorization-server/tenant1"
        );
    }

    #[test]
    fn the_issuer_and_the_endpoints_are_checked() {
        let d = discovery("https://idp.example.com");
        let doc = |issuer: &str, token: &str| serde_json::json!({ "issuer": issuer, "token_endpoint": token });
        let ok = d
            .check(&doc(
                "https://idp.example.com",
                "https://idp.example.com/token",
            ))
            .unwrap();
        assert_eq!(ok.token_endpoint, "https://idp.example.com/token");
        assert!(ok.revocation_endpoint.is_none());
        for bad in [
            doc("https://evil.example.com", "https://idp.example.com/token"),
            doc("https://idp.example.com", "http://idp.example.com/token"),
            doc("https://idp.example.com", "/token"),
            serde_json::json!({ "token_endpoint": "https://idp.example.com/token" }),
            serde_json::json!({ "issuer": "https://idp.example.com" }),
        ] {
            let error = d.check(&bad).unwrap_err();
            assert!(matches!(error, Error::Discovery { .. }), "{bad}: {error}");
        }
    }
}
