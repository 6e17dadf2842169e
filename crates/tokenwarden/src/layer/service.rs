use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::HeaderName;
use http::header::{AUTHORIZATION, Entry};
use http::{Extensions, HeaderValue, Method, Request, Uri, Version};
use http_body::Body;
use tokenwarden_core::{BoxError, TokenParams};
use tower_service::Service;

use super::future::ResponseFuture;
use super::origin::Origins;
use crate::manager::ClientEntry;
use crate::{Error, TokenManager};

/// A future resolving to an `Authorization` value and the id of the token in it.
pub(crate) type HeaderFuture =
    Pin<Box<dyn Future<Output = Result<(HeaderValue, u64), Error>> + Send>>;

/// The layer's configuration, which its services and their response futures refer to.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) manager: TokenManager,
    pub(crate) client: Arc<ClientEntry>,
    pub(crate) origins: Arc<Origins>,
    pub(crate) max_replay_bytes: usize,
    pub(crate) replay: bool,
}

/// The middleware built by [`AccessTokenLayer`](super::AccessTokenLayer).
pub struct AccessTokenService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Each clone gets its own `Arc<Shared>`: response futures hold a reference to it, and a count
/// shared by every task on every core would be a contended write on each request.
impl<S: Clone> Clone for AccessTokenService<S> {
    fn clone(&self) -> Self {
        AccessTokenService {
            inner: self.inner.clone(),
            shared: Arc::new(Shared::clone(&self.shared)),
        }
    }
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

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &self.shared;
        if !shared.origins.allows(request.uri()) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let params = request
            .extensions()
            .get::<TokenParams>()
            .filter(|p| p.is_force_renewal() || !p.uses_default_key())
            .map(|p| Box::new(p.clone()));
        let cached = match params {
            None => shared.manager.cached_header(&shared.client),
            Some(_) => None,
        };
        let exact_size = request.body().size_hint().exact();
        let replayable =
            shared.replay && exact_size.is_some_and(|n| n <= shared.max_replay_bytes as u64);
        // An empty body needs no buffering: the replay sends an empty body too.
        let buffered = exact_size == Some(0);
        match cached {
            // The hot path: a cached token and nothing to wait for, so the ready inner service is
            // called right here.
            Some((header, id)) if !replayable || buffered => {
                let replay = replayable.then(|| {
                    (
                        self.inner.clone(),
                        Box::new(Captured::new(&request, Bytes::new())),
                    )
                });
                // One lookup both respects an Authorization header the caller set and adds ours.
                match request.headers_mut().entry(AUTHORIZATION) {
                    Entry::Occupied(_) => ResponseFuture::passthrough(self.inner.call(request)),
                    Entry::Vacant(slot) => {
                        slot.insert(header);
                        let future = self.inner.call(request);
                        ResponseFuture::sending(future, shared.clone(), replay, id, params)
                    }
                }
            }
            _ if request.headers().contains_key(AUTHORIZATION) => {
                ResponseFuture::passthrough(self.inner.call(request))
            }
            cached => {
                // The ready service goes into the future, which first waits for a token or a body;
                // `self` keeps a clone that will be made ready again.
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                if replayable && !buffered {
                    let replay_service = self.inner.clone();
                    return ResponseFuture::collecting(
                        request,
                        ready,
                        replay_service,
                        shared.clone(),
                        cached,
                        params,
                    );
                }
                let replay = replayable.then(|| {
                    (
                        self.inner.clone(),
                        Box::new(Captured::new(&request, Bytes::new())),
                    )
                });
                let token = acquire_header(shared.clone(), params.as_deref().cloned());
                ResponseFuture::awaiting_token(
                    request,
                    ready,
                    shared.clone(),
                    replay,
                    token,
                    params,
                )
            }
        }
    }
}

pub(crate) fn set_authorization<B>(request: &mut Request<B>, header: HeaderValue) {
    request.headers_mut().insert(AUTHORIZATION, header);
}

/// What is kept of a request so it can be sent again: everything but the `Authorization` header.
pub(crate) struct Captured {
    method: Method,
    uri: Uri,
    version: Version,
    // A flat list (one allocation) rather than a HeaderMap clone (two, plus its index): the map
    // is rebuilt only in the rare case of a replay.
    headers: Vec<(HeaderName, HeaderValue)>,
    extensions: Extensions,
    body: Bytes,
}

impl Captured {
    pub(crate) fn new<B>(request: &Request<B>, body: Bytes) -> Self {
        Captured {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            extensions: request.extensions().clone(),
            body,
        }
    }

    pub(crate) fn into_request<B: From<Bytes>>(self, header: HeaderValue) -> Request<B> {
        let mut request = Request::new(B::from(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        let headers = request.headers_mut();
        headers.reserve(self.headers.len() + 1);
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        *request.extensions_mut() = self.extensions;
        set_authorization(&mut request, header);
        request
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
        Ok((entry.header.clone(), entry.id))
    })
}

/// After a 401: invalidate the token that was sent (only if it is still cached), then get the
/// current one; a burst of 401s for one token costs one renewal.
pub(crate) fn renew_after_rejection(
    shared: Arc<Shared>,
    params: Option<TokenParams>,
    sent: u64,
) -> HeaderFuture {
    Box::pin(async move {
        let params = params
            .map(|p| p.without_force_renewal())
            .unwrap_or_default();
        let manager = &shared.manager;
        let slot = manager.slot_for(&shared.client, &params);
        manager.invalidate_if(&slot, |e| e.id == sent).await;
        let entry = manager.entry(&shared.client, &slot, false).await?;
        Ok((entry.header.clone(), entry.id))
    })
}

/// After a 401 to a request that cannot be replayed: only invalidate the token.
pub(crate) fn invalidate_rejected(
    shared: Arc<Shared>,
    params: Option<TokenParams>,
    sent: u64,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let params = params.unwrap_or_default();
        let manager = &shared.manager;
        let slot = manager.slot_for(&shared.client, &params);
        manager.invalidate_if(&slot, |e| e.id == sent).await;
    })
}
