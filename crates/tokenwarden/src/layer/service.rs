use std::fmt;
use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::header::HeaderName;
use http::{Extensions, HeaderValue, Method, Request, Uri, Version};
use http_body::Body;
use tokenwarden_core::{BoxError, TokenParams};
use tower_service::Service;

use super::future::ResponseFuture;
use super::origin::Origins;
use crate::manager::{ClientEntry, DefaultTokenCache};
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
    tokens: DefaultTokenCache,
}

/// Each clone gets its own `Arc<Shared>`: response futures hold a reference to it, and a count
/// shared by every task on every core would be a contended write on each request.
impl<S: Clone> Clone for AccessTokenService<S> {
    fn clone(&self) -> Self {
        AccessTokenService {
            inner: self.inner.clone(),
            shared: Arc::new(Shared::clone(&self.shared)),
            tokens: self.tokens.clone(),
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
        let tokens = TokenManager::default_token_cache(&shared.client);
        AccessTokenService {
            inner,
            shared,
            tokens,
        }
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
            None => shared
                .manager
                .cached_header(&shared.client, &mut self.tokens),
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
                let replay =
                    replayable.then(|| (self.inner.clone(), Captured::new(&request, Bytes::new())));
                // One hash lookup in the common case: insert ours, and should the caller have set
                // an Authorization header of their own, put theirs back and leave the request be.
                if let Some(own) = request.headers_mut().insert(AUTHORIZATION, header) {
                    request.headers_mut().insert(AUTHORIZATION, own);
                    return ResponseFuture::passthrough(self.inner.call(request));
                }
                let future = self.inner.call(request);
                ResponseFuture::sending(future, shared.clone(), replay, id, params)
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
                let replay =
                    replayable.then(|| (self.inner.clone(), Captured::new(&request, Bytes::new())));
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
    // Every header name and value copied into one buffer: one allocation per request, where
    // cloning the values would allocate for each (a value parsed from a string must be made
    // shareable first). Parsed back into a map only in the rare case of a replay.
    headers: Vec<u8>,
    extensions: Extensions,
    body: Bytes,
}

impl Captured {
    pub(crate) fn new<B>(request: &Request<B>, body: Bytes) -> Self {
        let map = request.headers();
        let size = map
            .iter()
            .map(|(n, v)| 7 + n.as_str().len() + v.len())
            .sum();
        let mut headers = Vec::with_capacity(size);
        for (name, value) in map {
            // Lengths fit: hyper and every server cap a header far below 64 KiB names / 4 GiB values.
            headers.extend_from_slice(&(name.as_str().len() as u16).to_le_bytes());
            headers.extend_from_slice(name.as_str().as_bytes());
            headers.extend_from_slice(&(value.len() as u32).to_le_bytes());
            headers.extend_from_slice(value.as_bytes());
            headers.push(u8::from(value.is_sensitive()));
        }
        Captured {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers,
            extensions: request.extensions().clone(),
            body,
        }
    }

    /// The request to send again, with a new `Authorization`; `None` if a header cannot be
    /// rebuilt exactly (a value the caller built unchecked), in which case nothing is replayed.
    pub(crate) fn into_request<B: From<Bytes>>(self, header: HeaderValue) -> Option<Request<B>> {
        let mut request = Request::new(B::from(self.body));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        let map = request.headers_mut();
        let mut rest = &self.headers[..];
        while !rest.is_empty() {
            let (name_len, tail) = rest.split_first_chunk::<2>()?;
            let (name, tail) = tail.split_at_checked(usize::from(u16::from_le_bytes(*name_len)))?;
            let (value_len, tail) = tail.split_first_chunk::<4>()?;
            let value_len = usize::try_from(u32::from_le_bytes(*value_len)).ok()?;
            let (value, tail) = tail.split_at_checked(value_len)?;
            let (sensitive, tail) = tail.split_first()?;
            let mut value = HeaderValue::from_bytes(value).ok()?;
            value.set_sensitive(*sensitive == 1);
            map.append(HeaderName::from_bytes(name).ok()?, value);
            rest = tail;
        }
        *request.extensions_mut() = self.extensions;
        set_authorization(&mut request, header);
        Some(request)
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[test]
    fn a_captured_request_comes_back_identical_but_for_the_new_token() {
        let mut sensitive = HeaderValue::from_static("s3cr3t-cookie");
        sensitive.set_sensitive(true);
        let mut original = Request::post("https://api.example.com/v1/items?x=1")
            .version(Version::HTTP_2)
            .header("accept", "application/json")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .header(
                "x-Custom-Name",
                "caf\u{e9}"
                    .as_bytes()
                    .iter()
                    .map(|b| *b as char)
                    .collect::<String>(),
            )
            .header("cookie", sensitive)
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        original
            .extensions_mut()
            .insert(TokenParams::new().scope("a"));
        let captured = Captured::new(&original, Bytes::from_static(b"payload"));
        let new_token = HeaderValue::from_static("Bearer new");
        let replay: Request<Full<Bytes>> = captured.into_request(new_token).unwrap();

        assert_eq!(replay.method(), original.method());
        assert_eq!(replay.uri(), original.uri());
        assert_eq!(replay.version(), Version::HTTP_2);
        assert_eq!(replay.headers()[AUTHORIZATION], "Bearer new");
        let without_auth: Vec<_> = replay
            .headers()
            .iter()
            .filter(|(n, _)| *n != AUTHORIZATION)
            .collect();
        let expected: Vec<_> = original.headers().iter().collect();
        assert_eq!(
            without_auth, expected,
            "every header, in order, with repeated names kept"
        );
        assert!(replay.headers()["cookie"].is_sensitive());
        assert_eq!(
            replay.extensions().get::<TokenParams>(),
            Some(&TokenParams::new().scope("a"))
        );
        assert_eq!(http_body::Body::size_hint(replay.body()).exact(), Some(7));
    }
}
