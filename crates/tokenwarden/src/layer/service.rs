use std::fmt;
use std::mem;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, Entry as HeaderEntry};
use http::{Extensions, Request, Response};
use tokenwarden_core::{BoxError, SubjectToken, TokenParams, UserKey};
use tower_service::Service;

use super::future::{Prepare, ResponseFuture, Token, Watch};
use super::origin::{Origins, Refused, describe};
use super::replay::{Buffered, CopyBuffers, Kept, ReplayPolicy, RequestCopy};
use crate::manager::{ClientKind, NamedClient, Slot, TokenView};
use crate::{Error, TokenManager};

/// Where a layer finds the subject token of a request that does not carry one in its
/// extensions.
type FindSubject = dyn Fn(&Extensions) -> Option<SubjectToken> + Send + Sync;

#[derive(Clone)]
pub(crate) struct SubjectFn(pub(crate) Arc<FindSubject>);

impl fmt::Debug for SubjectFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SubjectFn")
    }
}

/// A layer's configuration: read by every request, written never.
pub(crate) struct Config {
    pub(crate) manager: TokenManager,
    pub(crate) client: Arc<NamedClient>,
    pub(crate) origins: Origins,
    pub(crate) subject_from: Option<SubjectFn>,
}

impl Config {
    /// The parameters and slot of a request for a client that exchanges a subject token: the
    /// subject from the request's [`TokenParams`], else its [`SubjectToken`] extension, else
    /// the layer's function. Without one the request is not sent.
    fn subject_slot(&self, extensions: &Extensions) -> Result<(Arc<Slot>, bool), Error> {
        let params = wanted(extensions);
        let subject = params
            .and_then(TokenParams::subject)
            .or_else(|| extensions.get::<SubjectToken>())
            .cloned()
            .or_else(|| {
                self.subject_from
                    .as_ref()
                    .and_then(|find| (find.0)(extensions))
            })
            .ok_or_else(|| Error::NoSubjectToken {
                client: self.client.name.clone(),
            })?;
        let params = params.cloned().unwrap_or_default().subject_token(subject);
        let slot = self.manager.slot_for(&self.client, &params);
        Ok((slot, params.is_force_renewal()))
    }
}

/// What a service shares with the response futures of its requests: the layer's configuration
/// and a clone of the inner service to replay requests with after a 401, made the first time a
/// request is kept.
///
/// One per service clone, not one for all: a response future holds a reference, and a count
/// that every request on every core wrote would cost throughput on many cores.
pub(crate) struct Shared<S> {
    pub(crate) config: Arc<Config>,
    replay_with: OnceLock<Mutex<S>>,
    /// Buffers of request copies whose responses are in, for the next copies to fill: a kept
    /// request then allocates nothing (a few, for requests in flight at once). The boxes are
    /// what is reused: each moves into a response future as a pointer.
    #[allow(clippy::vec_box)]
    spare: Mutex<Vec<Box<CopyBuffers>>>,
}

/// How many spare copy buffers a service clone keeps.
const SPARE_BUFFERS: usize = 4;

impl<S> Shared<S> {
    /// Buffers for a copy: spare ones, or new ones.
    #[inline]
    pub(crate) fn take_buffers(&self) -> Box<CopyBuffers> {
        lock(&self.spare).pop().unwrap_or_default()
    }

    /// Buffers a copy no longer needs.
    #[inline]
    pub(crate) fn give_back(&self, buffers: Box<CopyBuffers>) {
        if buffers.worth_keeping() {
            let mut spare = lock(&self.spare);
            if spare.len() < SPARE_BUFFERS {
                spare.push(buffers);
            }
        }
    }
}

impl<S: Clone> Shared<S> {
    /// A clone of the service kept for replays, if a request was ever kept.
    pub(crate) fn replay_service(&self) -> Option<S> {
        let kept = self.replay_with.get()?;
        Some(lock(kept).clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing guarded here can be left half-changed by a panic.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The middleware built by [`AccessTokenLayer`](super::AccessTokenLayer): attaches tokens to
/// requests for allowed origins, and replays a request once after a 401 if the replay policy
/// `P` kept it.
///
/// Cloning it clones the inner service and allocates the small state its response futures
/// share.
pub struct AccessTokenService<S, P = Buffered> {
    inner: S,
    shared: Arc<Shared<S>>,
    replay: P,
    /// This service's view of the client's configured token.
    token: TokenView,
}

impl<S, P> AccessTokenService<S, P> {
    pub(crate) fn new(inner: S, config: Arc<Config>, replay: P) -> Self {
        let token = config.client.default_slot.view();
        AccessTokenService {
            inner,
            shared: Arc::new(Shared {
                config,
                replay_with: OnceLock::new(),
                spare: Mutex::new(Vec::new()),
            }),
            replay,
            token,
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

impl<S: Clone, P: Clone> Clone for AccessTokenService<S, P> {
    fn clone(&self) -> Self {
        AccessTokenService::new(
            self.inner.clone(),
            self.shared.config.clone(),
            self.replay.clone(),
        )
    }
}

impl<S: fmt::Debug, P: fmt::Debug> fmt::Debug for AccessTokenService<S, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessTokenService")
            .field("inner", &self.inner)
            .field("client", &self.shared.config.client.name)
            .field("replay", &self.replay)
            .finish()
    }
}

/// Which token a request asks for, besides the layer's client: what it carries in its
/// extensions, put there by the caller or the app's own middleware. A [`TokenParams`] (scope,
/// resource, audience, extra parameters, force renewal; `None` asks for the client's configured
/// token); for a user client the [`UserKey`] of the user it acts for, and for a client that
/// exchanges a subject token the [`SubjectToken`] (both read in `call`).
fn wanted(extensions: &Extensions) -> Option<&TokenParams> {
    extensions
        .get::<TokenParams>()
        .filter(|params| params.is_force_renewal() || !params.uses_default_key())
}

impl<S, P, B, ResBody> Service<Request<B>> for AccessTokenService<S, P>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    P: ReplayPolicy<B>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let config = &*self.shared.config;
        if let Err(refused) = config.origins.check(request.uri(), request.headers()) {
            not_allowed(&refused, &request);
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let params = wanted(request.extensions());
        let (slot, cached) = match config.client.kind {
            ClientKind::Own => {
                let cached = match params {
                    None => config.manager.cached(
                        &config.client,
                        &config.client.default_slot,
                        &mut self.token,
                    ),
                    Some(_) => None,
                };
                (None, cached)
            }
            ClientKind::Users => {
                // A user's token, or nothing: never the client's own, never another user's.
                let Some(user) = request.extensions().get::<UserKey>() else {
                    let error = Error::NoUserKey {
                        client: config.client.name.clone(),
                    };
                    return ResponseFuture::failed(error.into());
                };
                let slot = config.manager.user_slot(&config.client, user);
                let cached = match params {
                    Some(params) if params.is_force_renewal() => None,
                    _ => config.manager.cached_in(&config.client, &slot),
                };
                (Some(slot), cached)
            }
            ClientKind::Subjects => {
                // A token for this request's subject, or nothing: never another caller's.
                let (slot, force) = match config.subject_slot(request.extensions()) {
                    Ok(found) => found,
                    Err(error) => return ResponseFuture::failed(error.into()),
                };
                let cached = match force {
                    true => None,
                    false => config.manager.cached_in(&config.client, &slot),
                };
                (Some(slot), cached)
            }
        };
        let Some(token) = cached else {
            return self.call_slow(request, slot);
        };
        // The copy is made before the token goes on the request: a replay carries a new token.
        let copy = match self.replay.keep(&mut request) {
            Kept::Nothing => None,
            Kept::Body(body) => {
                self.keep_replay_service();
                let buffers = self.shared.take_buffers();
                Some(RequestCopy::of(&request, body, buffers))
            }
            kept @ Kept::Buffering(_) => {
                let token = Token::Ready { slot, token };
                return self.prepare(request, token, kept);
            }
        };
        // One lookup: a request that brings its own Authorization keeps it.
        match request.headers_mut().entry(AUTHORIZATION) {
            HeaderEntry::Occupied(_) => {
                return ResponseFuture::passthrough(self.inner.call(request));
            }
            HeaderEntry::Vacant(vacant) => {
                vacant.insert(token.header);
            }
        }
        let watch = Watch {
            shared: self.shared.clone(),
            slot,
            id: token.id,
            on_probation: token.on_probation,
            copy,
        };
        ResponseFuture::sent(self.inner.call(request), watch)
    }
}

impl<S, P> AccessTokenService<S, P>
where
    S: Clone,
{
    /// Makes sure a clone of the inner service is kept to replay with (once per service clone).
    #[inline]
    fn keep_replay_service(&self) {
        // A replay makes its clone ready before calling it.
        self.shared
            .replay_with
            .get_or_init(|| Mutex::new(self.inner.clone()));
    }

    /// A request that must wait before it is sent: for a token that is not cached, or for its
    /// body to be read.
    #[cold]
    #[inline(never)]
    fn call_slow<B, ResBody>(
        &mut self,
        mut request: Request<B>,
        slot: Option<Arc<Slot>>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        P: ReplayPolicy<B>,
    {
        if request.headers().contains_key(AUTHORIZATION) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let config = self.shared.config.clone();
        let params = wanted(request.extensions()).cloned().unwrap_or_default();
        if slot.is_none()
            && let Err(error) = config.client.check_subject(&params)
        {
            return ResponseFuture::failed(error.into());
        }
        let token = Token::Pending(Box::pin(async move {
            let slot = slot.unwrap_or_else(|| config.manager.slot_for(&config.client, &params));
            let entry = config
                .manager
                .entry(&config.client, &slot, params.is_force_renewal())
                .await?;
            Ok((slot, entry))
        }));
        let kept = self.replay.keep(&mut request);
        self.prepare(request, token, kept)
    }

    fn prepare<B>(
        &mut self,
        request: Request<B>,
        token: Token,
        kept: Kept<B>,
    ) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        if matches!(kept, Kept::Body(_) | Kept::Buffering(_)) {
            self.keep_replay_service();
        }
        // The ready service goes into the future; this one keeps a clone to make ready again.
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        ResponseFuture::preparing(Prepare {
            token,
            kept,
            request: Some(request),
            service: Some(ready),
            shared: self.shared.clone(),
        })
    }
}

/// A request the layer sends without a token: said once, at debug level, with the origin (a
/// `localhost` vs `127.0.0.1` mistake shows here).
#[cold]
#[inline(never)]
fn not_allowed<B>(refused: &Refused, request: &Request<B>) {
    let origin = describe(request.uri());
    match refused {
        Refused::Origin => tracing::debug!(
            %origin,
            "request to an origin the layer does not allow; sent without a token"
        ),
        Refused::HostHeader => tracing::debug!(
            %origin,
            "request whose Host header names another origin than its URI; sent without a token"
        ),
    }
}
