//! The HTTP transport: any tower service, type-erased, and the default hyper + rustls client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokenwarden_core::BoxError;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::Error;

/// A response body of any transport.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Any transport, erased to one cloneable, shareable type.
pub(crate) type Transport =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<ResponseBody>, BoxError>;

pub(crate) fn boxed<S, B>(service: S) -> Transport
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        service
            .map_err(Into::into)
            .map_response(|response: Response<B>| {
                response.map(|body| body.map_err(Into::into).boxed_unsync())
            }),
    )
}

/// How long an idle pooled connection is kept; longer mostly holds sockets servers have closed
/// already (token requests are minutes apart).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A hyper-util client for the outgoing requests your services send, speaking https and http,
/// HTTP/1.1 and HTTP/2 (negotiated by ALPN): the same TLS set-up as the token endpoint's
/// client (rustls with the ring provider; the platform's root certificates, or where the
/// platform has none, as in a minimal container, the Mozilla roots bundled by `webpki-roots`).
///
/// No feature gates it: the TLS stack is a dependency of the token endpoint's client already.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tokenwarden_oauth::Error> {
/// let http = tokenwarden_oauth::https_client::<Full<Bytes>>()?;
/// # let _ = http;
/// # Ok(())
/// # }
/// ```
pub fn https_client<B>() -> Result<HttpsClient<B>, Error>
where
    B: http_body::Body + Send,
    B::Data: Send,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(builder) => builder,
        Err(error) => {
            tracing::debug!(%error, "no usable platform root certificates, using the bundled webpki roots");
            HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(provider)
                .map_err(|e| Error::config(format!("cannot set up TLS: {e}")))?
        }
    };
    let connector = builder
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector))
}

/// The client [`https_client`] builds.
pub type HttpsClient<B> = Client<HttpsConnector<HttpConnector>, B>;

/// The token endpoint's client: [`https_client`] (the endpoint check lives in
/// [`crate::ClientConfigBuilder::build`]).
pub(crate) fn default_transport() -> Result<HttpsClient<Full<Bytes>>, Error> {
    https_client()
}
