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
///
/// A clone of it clones the inner service and one `Arc`: callers that clone a service for every
/// request (`svc.clone().oneshot(request)`) write one shared reference count a request.
pub struct AccessTokenService<S> {
    inner: S,
    applied: Arc<Applied<S>>,
    /// The service made by the layer keeps its own view of the default token, so the requests
    /// it sends skip even a thread-local lookup; its clones start without one and read this
    /// thread's (see [`local_tokens`]), so that cloning writes no count of the token's.
    token: Option<LocalToken>,
}

/// A cached token's header: the service's own (cloned where it goes into the request; see
/// [`LocalToken::current`]) or a clone of this thread's.
enum Cached<'a> {
    Service(&'a HeaderValue),
    Thread(HeaderValue),
}

impl Cached<'_> {
    fn into_owned(self) -> HeaderValue {
        match self {
            Cached::Service(header) => header.clone(),
            Cached::Thread(header) => header,
        }
    }
}

/// One service's view of its client's default token, and its own copy of the token's header.
struct LocalToken {
    entries: DefaultTokenCache,
    header: Option<(u64, HeaderValue)>,
}

impl LocalToken {
    /// The default token's header and id, if a usable token is cached.
    ///
    /// A reference, cloned only where the header goes into the request: a `HeaderValue` moved
    /// through the stack is read back with wider loads than the byte of its `is_sensitive`
    /// flag was written with, and that read stalls on a failed store-to-load forward (about
    /// 7 ns a request in one memory layout profiled with perf).
    #[inline]
    fn current(&mut self, hot: &Hot) -> Option<(&HeaderValue, u64)> {
        let entry = hot.manager.usable_default(&hot.client, &mut self.entries)?;
        let id = entry.id;
        if !matches!(&self.header, Some((cached, _)) if *cached == id) {
            self.header = Some((id, local_tokens::copy(&entry.header)));
        }
        self.header.as_ref().map(|(_, header)| (header, id))
    }
}

/// What every clone of one applied layer shares, behind one `Arc`.
///
/// Aligned to a cache line so that the `Arc`'s reference counts, which every clone and drop of
/// the service writes, share no line with the fields every request reads.
#[repr(align(64))]
struct Applied<S> {
    /// What the hot path reads of the configuration, copied here when the layer is applied so
    /// that it is one pointer away, not two.
    hot: Hot,
    shared: Arc<Shared>,
    /// With replay on: the clone to replay with, found by its id after a 401.
    replay: Option<Arc<ReplaySource<S>>>,
    /// `replay`'s id, read on the hot path without following that pointer.
    replay_id: Option<NonZeroU64>,
    /// Where this thread's view of the client's default token is kept (see [`local_tokens`]).
    token_key: usize,
}

impl<S: Clone> Clone for AccessTokenService<S> {
    fn clone(&self) -> Self {
        AccessTokenService {
            inner: self.inner.clone(),
            applied: self.applied.clone(),
            token: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AccessTokenService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenService")
            .field("inner", &self.inner)
            .field("client", &self.applied.shared.client.name)
            .finish()
    }
}

/// The part of [`Shared`] every request reads.
struct Hot {
    layer: u64,
    manager: TokenManager,
    client: Arc<ClientEntry>,
    origins: Origins,
    /// With replay on, the largest body buffered for a replay; `None` with replay off.
    replay_limit: Option<u64>,
}

/// Each thread's view of the default tokens its layers send, and its own copy of each token's
/// header.
///
/// Per thread, not per service, so that a service holds nothing here and its clones cost
/// nothing: callers often clone a service for every request, and a per-service view would hold
/// `Arc`s of the token, whose counts every clone and drop on every core would write.
///
/// Every request carries a clone of the `Authorization` value, and cloning a `HeaderValue` bumps
/// the reference count of its bytes: with one value for the whole process, that count would be
/// written by every request on every core (tower-http's static layer does exactly that). Each
/// thread copies a token's header once and clones its own copy; a count is then written by one
/// thread's requests (and by whoever drops them).
mod local_tokens {
    use std::cell::RefCell;

    use http::HeaderValue;

    use super::Hot;
    use crate::TokenManager;
    use crate::manager::DefaultTokenCache;

    /// Default tokens a thread keeps a view of at once: one per client its layers serve,
    /// commonly. A thread that alternates between more clients than this rebuilds a view (and
    /// copies a header) on a miss.
    pub(super) const SLOTS: usize = 8;

    struct Local {
        /// [`TokenManager::default_token_key`]: unique while `entries` is alive.
        key: usize,
        entries: DefaultTokenCache,
        /// The current token's id and this thread's copy of its header.
        header: Option<(u64, HeaderValue)>,
    }

    struct Table {
        slots: [Option<Local>; SLOTS],
        next: usize,
    }

    thread_local! {
        static TABLE: RefCell<Table> = const {
            RefCell::new(Table { slots: [const { None }; SLOTS], next: 0 })
        };
    }

    /// The default token's header (a clone of this thread's copy) and id, if a usable token is
    /// cached; `None` also where this thread cannot keep a view (it is shutting down), in which
    /// case the request takes the slow path.
    #[inline]
    pub(super) fn current(hot: &Hot, key: usize) -> Option<(HeaderValue, u64)> {
        TABLE
            .try_with(|table| {
                let mut table = table.try_borrow_mut().ok()?;
                let table = &mut *table;
                let index = match table
                    .slots
                    .iter()
                    .position(|s| matches!(s, Some(local) if local.key == key))
                {
                    Some(index) => index,
                    None => table.add(hot, key),
                };
                let Local {
                    entries, header, ..
                } = table.slots[index].as_mut()?;
                let entry = hot.manager.usable_default(&hot.client, entries)?;
                let id = entry.id;
                if !matches!(header, Some((cached, _)) if *cached == id) {
                    *header = Some((id, copy(&entry.header)));
                }
                header.as_ref().map(|(_, value)| (value.clone(), id))
            })
            .ok()
            .flatten()
    }

    impl Table {
        #[cold]
        #[inline(never)]
        fn add(&mut self, hot: &Hot, key: usize) -> usize {
            let index = self.next;
            self.next = (index + 1) % SLOTS;
            self.slots[index] = Some(Local {
                key,
                entries: TokenManager::default_token_cache(&hot.client),
                header: None,
            });
            index
        }
    }

    /// A copy of a token's header: the same bytes in memory of its own.
    #[cold]
    #[inline(never)]
    pub(super) fn copy(header: &HeaderValue) -> HeaderValue {
        let mut copy =
            HeaderValue::from_bytes(header.as_bytes()).unwrap_or_else(|_| header.clone());
        copy.set_sensitive(true);
        copy
    }
}

impl<S: Clone + Send + 'static> AccessTokenService<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        let replay = shared
            .replay
            .then(|| super::registry::register_service(inner.clone()));
        let replay_id = replay.as_ref().map(|source| source.id());
        let token_key = TokenManager::default_token_key(&shared.client);
        let token = Some(LocalToken {
            entries: TokenManager::default_token_cache(&shared.client),
            header: None,
        });
        let hot = Hot {
            layer: shared.id,
            manager: shared.manager.clone(),
            client: shared.client.clone(),
            origins: shared.origins.clone(),
            replay_limit: shared.replay.then_some(shared.max_replay_bytes as u64),
        };
        AccessTokenService {
            inner,
            applied: Arc::new(Applied {
                hot,
                shared,
                replay,
                replay_id,
                token_key,
            }),
            token,
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
        let applied = &*self.applied;
        let hot = &applied.hot;
        if !hot.origins.allows(request.uri()) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let default_params = request
            .extensions()
            .get::<TokenParams>()
            .is_none_or(|p| !p.is_force_renewal() && p.uses_default_key());
        let cached = match (default_params, &mut self.token) {
            (true, Some(token)) => token
                .current(hot)
                .map(|(header, id)| (Cached::Service(header), id)),
            (true, None) => local_tokens::current(hot, applied.token_key)
                .map(|(header, id)| (Cached::Thread(header), id)),
            (false, _) => None,
        };
        let Some((header, id)) = cached else {
            return self.call_slow(request, None);
        };
        let exact_size = request.body().size_hint().exact();
        let replayable =
            matches!((exact_size, hot.replay_limit), (Some(n), Some(limit)) if n <= limit);
        // An empty body needs no buffering: the replay sends an empty body too.
        if replayable && exact_size != Some(0) {
            let header = header.into_owned();
            return self.call_slow(request, Some((header, id)));
        }
        // The hot path: a cached token and nothing to wait for, so the ready inner service is
        // called right here (in this function, so the request is not moved once more).
        let replay = match applied.replay_id {
            Some(id) if replayable => Some((id, Captured::new(&request))),
            _ => None,
        };
        // One hash lookup in the common case: insert ours, and should the caller have set an
        // Authorization header of their own, put theirs back and leave the request be.
        let previous = match header {
            Cached::Service(header) => request.headers_mut().insert(AUTHORIZATION, header.clone()),
            Cached::Thread(header) => request.headers_mut().insert(AUTHORIZATION, header),
        };
        if let Some(own) = previous {
            request.headers_mut().insert(AUTHORIZATION, own);
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let watch = Watch {
            layer: hot.layer,
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
        let shared = &self.applied.shared;
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
        let replay_source = self.applied.replay.as_ref().filter(|_| replayable).cloned();
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

    /// More clients on one thread than its table of token views holds: every request still
    /// carries its own client's token, no client asks for a second token, and while a thread
    /// sends for no more clients than the table holds, it reuses its copy of each header.
    #[tokio::test]
    async fn a_thread_sends_the_right_token_for_more_clients_than_its_table_holds() {
        let clients = local_tokens::SLOTS + 3;
        let names: Vec<String> = (0..clients).map(|i| format!("c{i}")).collect();
        let mut server = TestServer::builder();
        for name in &names {
            server = server.client(name, "s");
        }
        let server = server.start().await.unwrap();
        let mut manager = TokenManager::builder();
        for name in &names {
            let client = ClientCredentials::builder(&server.token_endpoint(), name)
                .client_secret("s")
                .build()
                .unwrap();
            manager = manager.client(name, client);
        }
        let manager = manager.build().unwrap();
        let mut expected = Vec::new();
        for name in &names {
            let token = manager.token(name).await.unwrap();
            expected.push(format!("Bearer {}", token.expose_secret()));
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let services: Vec<_> = names
            .iter()
            .map(|name| {
                let layer = AccessTokenLayer::builder(&manager, name)
                    .allow_any_origin()
                    .build()
                    .unwrap();
                let record = seen.clone();
                let inner = tower::service_fn(move |request: Request<Full<Bytes>>| {
                    let value = &request.headers()[AUTHORIZATION];
                    record
                        .lock()
                        .unwrap()
                        .push((value.as_bytes().as_ptr() as usize, value.clone()));
                    async { Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::default())) }
                });
                tower::Layer::layer(&layer, inner)
            })
            .collect();
        let sent = |clients: usize, rounds: usize| {
            let mut sent = Vec::new();
            for _ in 0..rounds {
                for (i, service) in services.iter().enumerate().take(clients) {
                    let at = send_on_this_thread(service, &seen);
                    let value = seen.lock().unwrap().last().unwrap().1.clone();
                    assert_eq!(value, expected[i].as_str(), "client {i}");
                    assert!(value.is_sensitive());
                    sent.push((i, at));
                }
            }
            sent
        };
        // Round robin over more clients than slots: every view is rebuilt, every token right.
        sent(clients, 3);
        // Within the table's size, once every view is in it again (a pass over the clients can
        // evict a view it comes to later), each client's header is one copy, reused.
        sent(local_tokens::SLOTS, 2);
        let (first, second) = (sent(local_tokens::SLOTS, 1), sent(local_tokens::SLOTS, 1));
        assert_eq!(first, second, "each client reuses this thread's copy");
        for name in &names {
            assert_eq!(server.token_requests(name), 1, "{name}");
        }
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
        let id = service.applied.shared.id;
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
