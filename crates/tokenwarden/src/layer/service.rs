use std::fmt;
use std::future::Future;
use std::mem;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request};
use http_body::Body;
use tokenwarden_core::{BoxError, TokenParams};
use tower_service::Service;

use super::capture::Captured;
use super::future::{ResponseFuture, Watch};
use super::origin::Origins;
use super::registry::ReplaySource;
use crate::manager::{ClientEntry, DefaultTokenCache};
use crate::{Error, TokenManager};

/// A future resolving to an `Authorization` value and the id of the token in it.
pub(crate) type HeaderFuture =
    Pin<Box<dyn Future<Output = Result<(HeaderValue, u64), Error>> + Send>>;

/// The layer's configuration, shared by the layer, its services and (for a 401) their response
/// futures. Read on every request and written never, so sharing it costs no contention.
pub(crate) struct Shared {
    /// This configuration's key in the [registry](super::registry).
    pub(crate) id: u64,
    pub(crate) manager: TokenManager,
    pub(crate) client: Arc<ClientEntry>,
    pub(crate) origins: Origins,
    pub(crate) max_replay_bytes: usize,
    pub(crate) replay: bool,
}

impl Drop for Shared {
    fn drop(&mut self) {
        super::registry::forget(self.id);
    }
}

/// The middleware built by [`AccessTokenLayer`](super::AccessTokenLayer).
///
/// With replay on, it keeps one clone of the inner service (made when the layer is applied and
/// shared by this service's clones) to replay requests with after a 401, so no request clones
/// the inner service.
pub struct AccessTokenService<S> {
    inner: S,
    shared: Arc<Shared>,
    token: LocalToken,
    /// With replay on: the clone to replay with, found by its id after a 401.
    replay: Option<Arc<ReplaySource<S>>>,
    /// `replay`'s id, kept here so the hot path reads it without following the pointer.
    replay_id: Option<NonZeroU64>,
}

impl<S: Clone> Clone for AccessTokenService<S> {
    fn clone(&self) -> Self {
        AccessTokenService {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            token: self.token.clone(),
            replay: self.replay.clone(),
            replay_id: self.replay_id,
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

/// One service's view of its client's default token.
pub(crate) struct LocalToken {
    entries: DefaultTokenCache,
    /// The current token's header, as a clone of the copy this thread made of it (see
    /// [`header_copies`]); kept here so that a service sending many requests skips even the
    /// thread-local lookup. A clone of the service starts without it.
    header: Option<(u64, HeaderValue)>,
}

impl Clone for LocalToken {
    fn clone(&self) -> Self {
        LocalToken {
            entries: self.entries.clone(),
            header: None,
        }
    }
}

impl LocalToken {
    fn new(client: &ClientEntry) -> Self {
        LocalToken {
            entries: TokenManager::default_token_cache(client),
            header: None,
        }
    }

    /// The default token's header and id, if a usable token is cached.
    ///
    /// A reference, cloned only where the header goes into the request: a `HeaderValue` moved
    /// through the stack is read back with wider loads than the byte of its `is_sensitive`
    /// flag was written with, and that read stalls on a failed store-to-load forward (about
    /// 7 ns a request in one memory layout profiled with perf).
    #[inline]
    fn current(&mut self, shared: &Shared) -> Option<(&HeaderValue, u64)> {
        let entry = shared
            .manager
            .usable_default(&shared.client, &mut self.entries)?;
        let id = entry.id;
        if !matches!(&self.header, Some((cached, _)) if *cached == id) {
            self.header = Some((id, header_copies::get(id, &entry.header)));
        }
        self.header.as_ref().map(|(_, header)| (header, id))
    }
}

/// This thread's copies of token headers.
///
/// Every request carries a clone of the `Authorization` value, and cloning a `HeaderValue` bumps
/// the reference count of its bytes: with one value for the whole process, that count would be
/// written by every request on every core (tower-http's static layer does exactly that). Each
/// thread copies a token's header once and clones its own copy; a count is then written by one
/// thread's requests (and by whoever drops them). Per thread rather than per service, because
/// services are often cloned for each request, and a copy per clone would cost an allocation and
/// a check of every byte of the token each time.
mod header_copies {
    use std::cell::RefCell;

    use http::HeaderValue;

    /// Tokens a thread keeps copies of at once: one per client its layers serve, commonly. A
    /// thread that alternates between more tokens than this copies a header again on a miss.
    const SLOTS: usize = 8;

    struct Copies {
        slots: [Option<(u64, HeaderValue)>; SLOTS],
        next: usize,
    }

    thread_local! {
        static COPIES: RefCell<Copies> = const {
            RefCell::new(Copies { slots: [const { None }; SLOTS], next: 0 })
        };
    }

    /// A clone of this thread's copy of `header`, the header of entry `id` (ids are unique in the
    /// process); the copy is made on first use.
    #[inline(never)]
    pub(super) fn get(id: u64, header: &HeaderValue) -> HeaderValue {
        COPIES
            .try_with(|copies| {
                let mut copies = copies.try_borrow_mut().ok()?;
                if let Some((_, copy)) = copies.slots.iter().flatten().find(|(i, _)| *i == id) {
                    return Some(copy.clone());
                }
                let mut copy = HeaderValue::from_bytes(header.as_bytes()).ok()?;
                copy.set_sensitive(true);
                let slot = copies.next;
                copies.next = (slot + 1) % SLOTS;
                copies.slots[slot] = Some((id, copy.clone()));
                Some(copy)
            })
            .ok()
            .flatten()
            .unwrap_or_else(|| header.clone())
    }
}

impl<S: Clone + Send + 'static> AccessTokenService<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        let token = LocalToken::new(&shared.client);
        let replay = shared
            .replay
            .then(|| super::registry::register_service(inner.clone()));
        let replay_id = replay.as_ref().map(|source| source.id());
        AccessTokenService {
            inner,
            shared,
            token,
            replay,
            replay_id,
        }
    }
}

impl<S> AccessTokenService<S> {
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
    S: Service<Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
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

    #[inline]
    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        if !shared.origins.allows(request.uri()) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let default_params = request
            .extensions()
            .get::<TokenParams>()
            .is_none_or(|p| !p.is_force_renewal() && p.uses_default_key());
        let cached = match default_params {
            true => self.token.current(shared),
            false => None,
        };
        let Some((header, id)) = cached else {
            return self.call_slow(request, None);
        };
        let exact_size = request.body().size_hint().exact();
        let replayable =
            shared.replay && exact_size.is_some_and(|n| n <= shared.max_replay_bytes as u64);
        // An empty body needs no buffering: the replay sends an empty body too.
        if replayable && exact_size != Some(0) {
            let header = header.clone();
            return self.call_slow(request, Some((header, id)));
        }
        // The hot path: a cached token and nothing to wait for, so the ready inner service is
        // called right here (in this function, so the request is not moved once more).
        let replay = match self.replay_id {
            Some(id) if replayable => Some((id, Captured::new(&request))),
            _ => None,
        };
        // One hash lookup in the common case: insert ours, and should the caller have set an
        // Authorization header of their own, put theirs back and leave the request be.
        if let Some(own) = request.headers_mut().insert(AUTHORIZATION, header.clone()) {
            request.headers_mut().insert(AUTHORIZATION, own);
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let watch = Watch {
            layer: shared.id,
            sent: id,
            replay,
        };
        ResponseFuture::sending(self.inner.call(request), watch)
    }
}

impl<S: Clone> AccessTokenService<S> {
    /// Everything else: per-request parameters, no cached token, or a body to buffer first.
    #[cold]
    #[inline(never)]
    fn call_slow<B>(
        &mut self,
        request: Request<B>,
        cached: Option<(HeaderValue, u64)>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        let shared = &self.shared;
        let params = request
            .extensions()
            .get::<TokenParams>()
            .filter(|p| p.is_force_renewal() || !p.uses_default_key())
            .map(|p| Box::new(p.clone()));
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let exact_size = request.body().size_hint().exact();
        let replayable =
            shared.replay && exact_size.is_some_and(|n| n <= shared.max_replay_bytes as u64);
        let buffered = exact_size == Some(0);
        // The ready service goes into the future, which first waits for a token or a body;
        // `self` keeps a clone that will be made ready again.
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        // A replay takes its service from the replay source, after a 401.
        let replay_source = self.replay.as_ref().filter(|_| replayable).cloned();
        if !buffered && let Some(source) = replay_source {
            return ResponseFuture::collecting(
                request,
                ready,
                source,
                shared.clone(),
                cached,
                params,
            );
        }
        let replay = replay_source.map(|source| (source, Captured::new(&request)));
        let token = acquire_header(shared.clone(), params.as_deref().cloned());
        ResponseFuture::awaiting_token(request, ready, shared.clone(), replay, token, params)
    }
}

pub(crate) fn set_authorization<B>(request: &mut Request<B>, header: HeaderValue) {
    request.headers_mut().insert(AUTHORIZATION, header);
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
    use std::convert::Infallible;
    use std::sync::Mutex;

    use http_body_util::Full;
    use tokenwarden_testkit::TestServer;
    use tower::Service;

    use crate::{AccessTokenLayer, ClientCredentials};

    use super::*;

    /// Sends one request through a clone of `service` on this thread, without an executor (the
    /// token is cached), and returns where the sent Authorization value's bytes live.
    fn send_on_this_thread<S>(service: &S, seen: &Mutex<Vec<(usize, HeaderValue)>>) -> usize
    where
        S: Service<Request<Full<Bytes>>, Error = BoxError> + Clone,
    {
        let mut service = service.clone();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(service.poll_ready(&mut cx).is_ready());
        let request = Request::get("http://api.test/x")
            .body(Full::default())
            .unwrap();
        let mut future = std::pin::pin!(service.call(request));
        assert!(
            future.as_mut().poll(&mut cx).is_ready(),
            "the token was cached"
        );
        seen.lock().unwrap().last().unwrap().0
    }

    #[tokio::test]
    async fn each_thread_sends_its_own_copy_of_the_header() {
        let server = TestServer::builder()
            .client("c", "s")
            .start()
            .await
            .unwrap();
        let client = ClientCredentials::builder(&server.token_endpoint(), "c")
            .client_secret("s")
            .build()
            .unwrap();
        let manager = TokenManager::builder().client("c", client).build().unwrap();
        manager.token("c").await.unwrap();
        let layer = AccessTokenLayer::builder(&manager, "c")
            .allow_any_origin()
            .build()
            .unwrap();
        // Where each sent Authorization value's bytes live.
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
            let value = &request.headers()[AUTHORIZATION];
            record
                .lock()
                .unwrap()
                .push((value.as_bytes().as_ptr() as usize, value.clone()));
            async { Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::default())) }
        });
        let service = tower::Layer::layer(&layer, inner);
        // Clones for each request, as callers of a hyper client often do.
        let here = [
            send_on_this_thread(&service, &seen),
            send_on_this_thread(&service, &seen),
        ];
        let there = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    [
                        send_on_this_thread(&service, &seen),
                        send_on_this_thread(&service, &seen),
                    ]
                })
                .join()
                .unwrap()
        });
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().all(|(_, v)| *v == seen[0].1),
            "the same token each time"
        );
        assert!(seen.iter().all(|(_, v)| v.is_sensitive()));
        assert_eq!(
            here[0], here[1],
            "one thread reuses its copy, across clones"
        );
        assert_eq!(
            there[0], there[1],
            "one thread reuses its copy, across clones"
        );
        assert_ne!(
            here[0], there[0],
            "two threads never share the bytes (and their reference count)"
        );
        assert_eq!(server.token_requests("c"), 1);
    }

    #[test]
    fn header_copies_are_right_beyond_their_slots_and_reused() {
        let headers: Vec<_> = (0..20)
            .map(|i| HeaderValue::from_str(&format!("Bearer t{i}")).unwrap())
            .collect();
        // Ids far from the manager's, which count up from 1.
        let id = |i: usize| u64::MAX - i as u64;
        for _ in 0..2 {
            for (i, header) in headers.iter().enumerate() {
                let copy = header_copies::get(id(i), header);
                assert_eq!(copy, header);
                assert!(copy.is_sensitive());
                assert_ne!(copy.as_bytes().as_ptr(), header.as_bytes().as_ptr());
            }
        }
        let first = header_copies::get(id(19), &headers[19]);
        let again = header_copies::get(id(19), &headers[19]);
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
    }

    #[tokio::test]
    async fn a_layer_is_found_by_its_id_until_it_is_dropped() {
        let client = ClientCredentials::builder("http://127.0.0.1:9/token", "c")
            .client_secret("s")
            .build()
            .unwrap();
        let manager = TokenManager::builder().client("c", client).build().unwrap();
        let layer = AccessTokenLayer::builder(&manager, "c")
            .allow_any_origin()
            .build()
            .unwrap();
        let service = tower::Layer::layer(
            &layer,
            tower::service_fn(|_: Request<Full<Bytes>>| async {
                Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::default()))
            }),
        );
        let id = service.shared.id;
        assert!(super::super::registry::find(id).is_some());
        drop(layer);
        assert!(
            super::super::registry::find(id).is_some(),
            "a service still uses the configuration"
        );
        drop(service);
        assert!(super::super::registry::find(id).is_none());
    }
}
