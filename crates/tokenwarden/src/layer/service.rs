use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Extensions, HeaderMap, HeaderValue, Method, Request, Uri, Version};
use http_body::Body;
use tokenwarden_core::{BoxError, TokenParams};
use tower_service::Service;

use super::future::ResponseFuture;
use super::origin::Origins;
use crate::manager::ClientEntry;
use crate::{Error, TokenManager};

/// A future resolving to an `Authorization` value.
pub(crate) type HeaderFuture = Pin<Box<dyn Future<Output = Result<HeaderValue, Error>> + Send>>;

/// What every service built by one layer shares.
pub(crate) struct Shared {
    pub(crate) manager: TokenManager,
    pub(crate) client: Arc<ClientEntry>,
    pub(crate) origins: Origins,
    pub(crate) max_replay_bytes: usize,
}

/// The middleware built by [`AccessTokenLayer`](super::AccessTokenLayer).
#[derive(Clone)]
pub struct AccessTokenService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for AccessTokenService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenService")
            .field("inner", &self.inner)
            .field("client", &self.shared.client.name)
            .finish()
    }
}

impl<S> AccessTokenService<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        AccessTokenService { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for AccessTokenService<S>
where
    S: Service<Request<B>, Response = http::Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes into the future; `self` keeps a clone that will be made ready again.
        let clone = self.inner.clone();
        let mut ready = mem::replace(&mut self.inner, clone);
        let shared = &self.shared;
        if request.headers().contains_key(AUTHORIZATION) || !shared.origins.allows(request.uri()) {
            return ResponseFuture::passthrough(ready.call(request));
        }
        let params = request
            .extensions()
            .get::<TokenParams>()
            .filter(|p| p.is_force_renewal() || !p.uses_default_key())
            .cloned();
        let header = match params {
            None => shared.manager.cached_header(&shared.client),
            Some(_) => None,
        };
        let exact_size = request.body().size_hint().exact();
        let replayable = exact_size.is_some_and(|n| n <= shared.max_replay_bytes as u64);
        if !replayable {
            return match header {
                Some(header) => {
                    let request = with_authorization(request, header.clone());
                    ResponseFuture::sending(ready.call(request), shared.clone(), None, header, params)
                }
                None => {
                    let token = acquire_header(shared.clone(), params.clone());
                    ResponseFuture::awaiting_token(request, ready, shared.clone(), None, token, params)
                }
            };
        }
        let replay_service = self.inner.clone();
        if exact_size == Some(0) {
            // An empty body needs no buffering: the replay sends an empty body too.
            let (parts, body) = request.into_parts();
            let replay = Some((replay_service, Captured::new(&parts, Bytes::new())));
            let request = Request::from_parts(parts, body);
            return match header {
                Some(header) => {
                    let request = with_authorization(request, header.clone());
                    ResponseFuture::sending(ready.call(request), shared.clone(), replay, header, params)
                }
                None => {
                    let token = acquire_header(shared.clone(), params.clone());
                    ResponseFuture::awaiting_token(request, ready, shared.clone(), replay, token, params)
                }
            };
        }
        ResponseFuture::collecting(request, ready, replay_service, shared.clone(), header, params)
    }
}

pub(crate) fn with_authorization<B>(mut request: Request<B>, header: HeaderValue) -> Request<B> {
    request.headers_mut().insert(AUTHORIZATION, header);
    request
}

/// What is kept of a request so it can be sent again: everything but the `Authorization` header.
pub(crate) struct Captured {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
    body: Bytes,
}

impl Captured {
    pub(crate) fn new(parts: &http::request::Parts, body: Bytes) -> Self {
        Captured {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
            body,
        }
    }

    pub(crate) fn into_request<B: From<Bytes>>(self, header: HeaderValue) -> Request<B> {
        let mut request = Request::new(B::from(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        *request.extensions_mut() = self.extensions;
        with_authorization(request, header)
    }
}

/// The token for the first send when none was cached.
pub(crate) fn acquire_header(shared: Arc<Shared>, params: Option<TokenParams>) -> HeaderFuture {
    Box::pin(async move {
        let params = params.unwrap_or_default();
        let manager = &shared.manager;
        let slot = manager.slot_for(&shared.client, &params);
        let entry = manager
            .entry(&shared.client, &slot, params.is_force_renewal())
            .await?;
        Ok(entry.header.clone())
    })
}

/// After a 401: invalidate the token that was sent (only if it is still cached), then get the
/// current one; a burst of 401s for one token costs one renewal.
pub(crate) fn renew_after_rejection(shared: Arc<Shared>, params: Option<TokenParams>, sent: HeaderValue) -> HeaderFuture {
    Box::pin(async move {
        let params = params.map(|p| p.without_force_renewal()).unwrap_or_default();
        let manager = &shared.manager;
        let slot = manager.slot_for(&shared.client, &params);
        manager.invalidate_if(&slot, |e| e.header == sent).await;
        let entry = manager.entry(&shared.client, &slot, false).await?;
        Ok(entry.header.clone())
    })
}

/// After a 401 to a request that cannot be replayed: only invalidate the token.
pub(crate) fn invalidate_rejected(
    shared: Arc<Shared>,
    params: Option<TokenParams>,
    sent: HeaderValue,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let params = params.unwrap_or_default();
        let manager = &shared.manager;
        let slot = manager.slot_for(&shared.client, &params);
        manager.invalidate_if(&slot, |e| e.header == sent).await;
    })
}
