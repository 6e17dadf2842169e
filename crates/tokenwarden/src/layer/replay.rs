//! Which requests are kept so they can be sent again after a 401, and what is kept of them.

use std::future::Future;
use std::mem;
use std::pin::Pin;

use bytes::Bytes;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri, Version};
use http_body::Body;
use http_body_util::BodyExt;
use tokenwarden_core::BoxError;

/// Decides whether a request sent with a token is kept so it can be replayed once, with a new
/// token, after a `401 Unauthorized`; the counterpart of tower's `retry::Policy::clone_request`
/// and tower-http's redirect `clone_body`.
///
/// The layer copies the method, URI, version, headers and extensions of every request the
/// policy keeps; the policy provides the body. [`Buffered`] (the default) keeps requests whose
/// body fits in memory, [`NoReplay`] keeps none and puts no bound on the body type.
pub trait ReplayPolicy<B>: Clone {
    /// Called once per request that is about to get a token, before it is sent. May replace the
    /// request's body (to read it into memory first).
    fn keep(&self, request: &mut Request<B>) -> Kept<B>;
}

/// What a [`ReplayPolicy`] kept of a request's body.
pub enum Kept<B> {
    /// Nothing: a 401 goes back to the caller (after the token it carried is invalidated).
    Nothing,
    /// A body to replay with; the request's own body is sent first.
    Body(B),
    /// The request's body must be read first: the future yields the body to send and the body
    /// to replay with. The request's body was replaced and is not sent.
    Buffering(BodyFuture<B>),
}

/// Reads a body into memory: yields the body to send and the body to replay with.
pub type BodyFuture<B> = Pin<Box<dyn Future<Output = Result<(B, B), BoxError>> + Send>>;

impl<B> std::fmt::Debug for Kept<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kept::Nothing => "Nothing",
            Kept::Body(_) => "Body",
            Kept::Buffering(_) => "Buffering",
        })
    }
}

/// Keeps no request: a 401 still invalidates the token, so the next request gets a new one,
/// and goes back to the caller. Any body type works, streaming ones included.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<B> ReplayPolicy<B> for NoReplay {
    #[inline]
    fn keep(&self, _request: &mut Request<B>) -> Kept<B> {
        Kept::Nothing
    }
}

/// Keeps requests whose body has a known size of at most a limit (64 KiB by default), reading
/// the body into memory before the first send; an empty body costs nothing. A request with a
/// larger or streaming body is sent as it is and a 401 to it goes back to the caller.
///
/// The body type is rebuilt from the bytes read, so it must be `From<Bytes>` (as `Full<Bytes>`
/// is). For other body types, use [`NoReplay`] or a [`ReplayPolicy`] of your own.
#[derive(Clone, Copy, Debug)]
pub struct Buffered {
    max_body: u64,
}

impl Buffered {
    /// The default limit.
    pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

    /// Keeps requests whose body is at most `max_body_bytes` long (`0`: only empty bodies).
    pub fn new(max_body_bytes: usize) -> Self {
        Buffered {
            max_body: u64::try_from(max_body_bytes).unwrap_or(u64::MAX),
        }
    }
}

impl Default for Buffered {
    fn default() -> Self {
        Buffered::new(Self::DEFAULT_MAX_BODY)
    }
}

impl<B> ReplayPolicy<B> for Buffered
where
    B: Body + From<Bytes> + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    #[inline]
    fn keep(&self, request: &mut Request<B>) -> Kept<B> {
        match request.body().size_hint().exact() {
            Some(0) => Kept::Body(B::from(Bytes::new())),
            Some(len) if len <= self.max_body => {
                let body = mem::replace(request.body_mut(), B::from(Bytes::new()));
                Kept::Buffering(Box::pin(async move {
                    let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                    Ok((B::from(bytes.clone()), B::from(bytes)))
                }))
            }
            _ => Kept::Nothing,
        }
    }
}

/// What a replay sends: the request as it was before the layer added its token.
pub(crate) struct RequestCopy<B> {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: B,
}

impl<B> RequestCopy<B> {
    pub(crate) fn of<T>(request: &Request<T>, body: B) -> Self {
        RequestCopy {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            body,
        }
    }

    /// The request again, with `authorization`.
    pub(crate) fn into_request(self, authorization: HeaderValue) -> Request<B> {
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, authorization);
        request
    }
}
