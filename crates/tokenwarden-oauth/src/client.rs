use std::fmt;

use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, StatusCode, Uri};
use http_body::Body as _;
use http_body_util::{BodyExt as _, Full};
use tokenwarden_core::{BoxError, TokenParams};
use tower::ServiceExt as _;

use crate::client_config::Endpoints;
use crate::request::form_post;
use crate::response::parse_token_response;
use crate::transport::{ResponseBody, Transport, boxed, default_transport};
use crate::{ClientConfig, Error, Form, Grant, TokenResponse};

/// Sends token requests to token endpoints over an HTTP transport.
///
/// One `OAuthClient` serves any number of clients and grants; cloning it is cheap and clones
/// share the transport (and its connection pool).
#[derive(Clone)]
pub struct OAuthClient {
    transport: Transport,
}

impl OAuthClient {
    /// A client over the default transport: hyper-util's pooled client with rustls (ring provider,
    /// the platform's root certificates or else the bundled webpki roots), HTTP/1.1 and HTTP/2.
    ///
    /// Fails with [`Error::Config`] only if TLS cannot be set up.
    pub fn new() -> Result<OAuthClient, Error> {
        Ok(OAuthClient::with_transport(default_transport()?))
    }

    /// A client over any tower HTTP service: a hyper client configured your way, a proxying
    /// client, or a test double.
    ///
    /// The service gets complete requests (absolute URI, headers, buffered form body); the
    /// timeout and the response size limit are applied around it.
    pub fn with_transport<S, B>(service: S) -> OAuthClient
    where
        S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        OAuthClient {
            transport: boxed(service),
        }
    }

    /// Sends one token request for `grant` with the per-request `params` and parses the answer:
    /// the grant's `grant_type` and form, the client's authentication, the exchange within the
    /// client's timeout and size limit, strict parsing, then the grant's own checks.
    ///
    /// This is the one function every grant goes through. It does not retry: see
    /// [`Error::is_retryable`] and [`Error::retry_after`].
    pub async fn request_token<G: Grant + ?Sized>(
        &self,
        grant: &G,
        params: &TokenParams,
    ) -> Result<TokenResponse, Error> {
        let client = grant.client();
        // A grant registered with a manager was checked then; one used directly is checked here.
        grant.validate()?;
        let mut form = Form::default();
        form.push("grant_type", grant.grant_type());
        grant.form(params, &mut form)?;
        let endpoint = &self.endpoints(client).await?.token;
        let request = form_post(client, endpoint, form)?;
        let timeout = client.timeout();
        let grant_type = grant.grant_type();
        tracing::debug!(
            client_id = client.client_id(),
            token_endpoint = %endpoint,
            grant_type,
            "requesting a token"
        );
        let exchange = send(
            self.transport.clone(),
            request,
            endpoint,
            client.max_response_bytes(),
        );
        let result = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok((status, headers, body))) => {
                parse_token_response(endpoint, status, &headers, &body)
            }
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(Error::Timeout {
                endpoint: endpoint.to_string(),
                after: timeout,
            }),
        }
        .and_then(|response| grant.check_response(response));
        match &result {
            Ok(response) => tracing::debug!(
                client_id = client.client_id(),
                grant_type,
                expires_in = response.expires_in().map(|d| d.as_secs()),
                "token issued"
            ),
            // Error messages hold no secrets: see `Error`.
            Err(error) => tracing::debug!(
                client_id = client.client_id(),
                grant_type,
                %error,
                "token request failed"
            ),
        }
        result
    }
}

impl OAuthClient {
    /// The client's endpoints: configured, or from its issuer's metadata.
    pub(crate) async fn endpoints(
        &self,
        client: &ClientConfig,
    ) -> Result<ResolvedEndpoints, Error> {
        match client.endpoints() {
            Endpoints::Fixed { token, revocation } => Ok(ResolvedEndpoints {
                token: token.clone(),
                revocation: revocation.clone(),
            }),
            Endpoints::Discovered(discovery) => {
                let metadata = discovery.metadata(&self.transport, client).await?;
                Ok(ResolvedEndpoints {
                    token: metadata.token_endpoint.clone(),
                    revocation: metadata.revocation_endpoint.clone(),
                })
            }
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }
}

/// Where a client's requests go, known.
pub(crate) struct ResolvedEndpoints {
    pub(crate) token: Uri,
    pub(crate) revocation: Option<Uri>,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient").finish_non_exhaustive()
    }
}

pub(crate) async fn send(
    transport: Transport,
    request: http::Request<Full<Bytes>>,
    endpoint: &Uri,
    limit: usize,
) -> Result<(StatusCode, HeaderMap, Bytes), Error> {
    let response = transport
        .oneshot(request)
        .await
        .map_err(|e| Error::transport(endpoint, e))?;
    let (parts, body) = response.into_parts();
    let body = read_limited(&parts.headers, body, endpoint, limit).await?;
    Ok((parts.status, parts.headers, body))
}

/// Reads at most `limit` bytes of body: a larger announced length is refused before reading, and
/// a body that grows past the limit is abandoned mid-stream (dropping it closes the connection).
async fn read_limited(
    headers: &HeaderMap,
    mut body: ResponseBody,
    endpoint: &Uri,
    limit: usize,
) -> Result<Bytes, Error> {
    let too_large = Error::ResponseTooLarge { limit };
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let limit_u64 = u64::try_from(limit).unwrap_or(u64::MAX);
    if announced.is_some_and(|len| len > limit_u64) || body.size_hint().lower() > limit_u64 {
        return Err(too_large);
    }
    let expected = announced.unwrap_or(body.size_hint().lower()).min(limit_u64);
    let mut buf = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(limit).min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::transport(endpoint, e))?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - buf.len() {
                return Err(too_large);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
const _: () = {
    // The facade spawns token requests: the future must be `Send`.
    fn assert_send<T: Send>(_: T) {}
    #[allow(dead_code)]
    fn request_token_is_send(c: &OAuthClient, g: &dyn Grant, p: &TokenParams) {
        assert_send(c.request_token(g, p));
    }
    #[allow(dead_code)]
    fn client_is_send_sync(c: OAuthClient) -> impl Send + Sync + Clone + 'static {
        c
    }
};
