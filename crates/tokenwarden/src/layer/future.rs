use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::{AUTHORIZATION, Entry as HeaderEntry};
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokenwarden_core::BoxError;
use tower_service::Service;

use super::challenge::is_insufficient_scope;
use super::replay::{Kept, RequestCopy};
use super::service::Shared;
use crate::manager::{Entry, Sendable, Slot};
use crate::{Error, TokenManager};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A token being obtained, and the slot it is for.
type TokenFuture = BoxFuture<Result<(Arc<Slot>, Arc<Entry>), Error>>;

/// A request on its way, and what its 401 would need.
type Sending<S, B> = (<S as Service<Request<B>>>::Future, Option<Watch<S, B>>);

pin_project! {
    /// The response future of [`AccessTokenService`](super::AccessTokenService).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // Getting a token, or reading the body to keep, before the first send.
        Preparing {
            prepare: Box<Prepare<S, B>>,
        },
        // Sent; with `watch`, a token went with it and a 401 is acted on.
        Sent {
            #[pin]
            future: S::Future,
            watch: Option<Watch<S, B>>,
        },
        // A 401 came back: invalidating the token and, for a kept request, getting a new one.
        Rejected {
            rejected: Box<Rejected<S, B>>,
        },
        // Not sent: the request cannot get a token (no user key for a user client).
        Failed {
            error: Option<BoxError>,
        },
        // The replay; its answer, a second 401 included, goes back as it is.
        Replaying {
            #[pin]
            future: S::Future,
            probation: Option<Probation>,
        },
    }
}

/// The token a request is sent with, or the wait for it.
pub(crate) enum Token {
    /// A token of `slot` (`None`: the client's configured token).
    Ready {
        slot: Option<Arc<Slot>>,
        token: Sendable,
    },
    Pending(TokenFuture),
    /// Gone with the request it was sent with.
    Taken,
}

/// What a request needs before it is sent.
pub(crate) struct Prepare<S, B> {
    pub(crate) token: Token,
    pub(crate) kept: Kept<B>,
    pub(crate) request: Option<Request<B>>,
    /// The inner service, ready.
    pub(crate) service: Option<S>,
    pub(crate) shared: Arc<Shared<S>>,
}

/// What a request sent with a token keeps, to act on a 401.
pub(crate) struct Watch<S, B> {
    pub(crate) shared: Arc<Shared<S>>,
    /// `None`: the client's configured token.
    pub(crate) slot: Option<Arc<Slot>>,
    /// The token that was sent.
    pub(crate) id: u64,
    /// The token was fetched because its predecessor was rejected: an answer other than 401
    /// clears that (see [`Slot::accept`]).
    pub(crate) on_probation: bool,
    /// The request to replay, if the replay policy kept it.
    pub(crate) copy: Option<RequestCopy<B>>,
}

/// A request done with (answered, or its future dropped) gives its copy's buffers back.
impl<S, B> Drop for Watch<S, B> {
    fn drop(&mut self) {
        if let Some(copy) = self.copy.take() {
            self.shared.give_back(copy.into_buffers());
        }
    }
}

impl<S, B> Watch<S, B> {
    /// The answer was not a 401: the token is accepted.
    #[cold]
    fn accepted(&self) {
        let config = &self.shared.config;
        let slot = self.slot.as_ref().unwrap_or(&config.client.default_slot);
        config.manager.accepted(slot, self.id);
    }
}

/// A replay sent with a token that was fetched because its predecessor was rejected.
pub(crate) struct Probation {
    manager: TokenManager,
    slot: Arc<Slot>,
    id: u64,
}

/// A 401 being acted on.
struct Rejected<S, B>
where
    S: Service<Request<B>>,
{
    renew: BoxFuture<Result<Option<Arc<Entry>>, Error>>,
    slot: Arc<Slot>,
    response: Option<S::Response>,
    copy: Option<RequestCopy<B>>,
    shared: Arc<Shared<S>>,
    /// The service and request of the replay, once the new token is there.
    replay: Option<(S, Request<B>)>,
    probation: Option<Probation>,
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Preparing { .. } => "preparing",
            State::Sent { watch: None, .. } => "sent without a token",
            State::Sent { .. } => "sent",
            State::Rejected { .. } => "rejected",
            State::Failed { .. } => "failed",
            State::Replaying { .. } => "replaying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// A request sent without a token: its response, whatever it is, goes back as it is.
    pub(crate) fn passthrough(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Sent {
                future,
                watch: None,
            },
        }
    }

    #[inline]
    pub(crate) fn sent(future: S::Future, watch: Watch<S, B>) -> Self {
        ResponseFuture {
            state: State::Sent {
                future,
                watch: Some(watch),
            },
        }
    }

    /// A request that is not sent: its future answers `error`.
    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn preparing(prepare: Prepare<S, B>) -> Self {
        ResponseFuture {
            state: State::Preparing {
                prepare: Box::new(prepare),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Preparing { prepare } => {
                    let (future, watch) = ready!(prepare.poll_send(cx))?;
                    State::Sent { future, watch }
                }
                StateProj::Sent { future, watch } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        if let Some(watch) = watch.as_ref().filter(|w| w.on_probation) {
                            watch.accepted();
                        }
                        return Poll::Ready(Ok(response));
                    }
                    let Some(watch) = watch.take() else {
                        return Poll::Ready(Ok(response));
                    };
                    // The token is fine but lacks a scope: a new one would be refused the same way.
                    if is_insufficient_scope(response.headers()) {
                        return Poll::Ready(Ok(response));
                    }
                    State::Rejected {
                        rejected: Box::new(Rejected::new(watch, response)),
                    }
                }
                StateProj::Rejected { rejected } => match ready!(rejected.poll_replay(cx)) {
                    Ok(Some((future, probation))) => State::Replaying { future, probation },
                    Ok(None) => {
                        return Poll::Ready(
                            rejected.response.take().ok_or_else(polled_after_completion),
                        );
                    }
                    Err(error) => return Poll::Ready(Err(error)),
                },
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(polled_after_completion)));
                }
                StateProj::Replaying { future, probation } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED
                        && let Some(Probation { manager, slot, id }) = probation.take()
                    {
                        manager.accepted(&slot, id);
                    }
                    return Poll::Ready(Ok(response));
                }
            };
            state.set(next);
        }
    }
}

impl<S, B> Prepare<S, B>
where
    S: Service<Request<B>>,
{
    /// Waits for the token and the body to keep, then sends.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<Sending<S, B>, BoxError>> {
        if let Token::Pending(token) = &mut self.token {
            let (slot, entry) = ready!(token.as_mut().poll(cx))?;
            self.token = Token::Ready {
                slot: Some(slot),
                token: Sendable::of(&entry),
            };
        }
        if let Kept::Buffering(buffering) = &mut self.kept {
            let (send, keep) = ready!(buffering.as_mut().poll(cx))?;
            if let Some(request) = &mut self.request {
                *request.body_mut() = send;
            }
            self.kept = Kept::Body(keep);
        }
        let (Some(mut request), Some(mut service)) = (self.request.take(), self.service.take())
        else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        let copy = match std::mem::replace(&mut self.kept, Kept::Nothing) {
            Kept::Body(body) => Some(RequestCopy::of(&request, body, self.shared.take_buffers())),
            Kept::Nothing | Kept::Buffering(_) => None,
        };
        let Token::Ready { slot, token } = std::mem::replace(&mut self.token, Token::Taken) else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        // A request that brings its own Authorization keeps it, and its 401 is its own.
        let watch = match request.headers_mut().entry(AUTHORIZATION) {
            HeaderEntry::Occupied(_) => None,
            HeaderEntry::Vacant(vacant) => {
                vacant.insert(token.header);
                Some(Watch {
                    shared: self.shared.clone(),
                    slot,
                    id: token.id,
                    on_probation: token.on_probation,
                    copy,
                })
            }
        };
        Poll::Ready(Ok((service.call(request), watch)))
    }
}

impl<S, B> Rejected<S, B>
where
    S: Service<Request<B>>,
{
    /// Invalidates the token that was refused (if it is still the current one) and, if the
    /// request was kept, gets the token to replay it with.
    #[cold]
    fn new(mut watch: Watch<S, B>, response: S::Response) -> Self {
        let (shared, id, copy) = (watch.shared.clone(), watch.id, watch.copy.take());
        let config = shared.config.clone();
        let slot = watch
            .slot
            .take()
            .unwrap_or_else(|| config.client.default_slot.clone());
        let replace = copy.is_some();
        let rejected_slot = slot.clone();
        let renew = Box::pin(async move {
            config
                .manager
                .rejected(&config.client, &rejected_slot, id, replace)
                .await
        });
        Rejected {
            renew,
            slot,
            response: Some(response),
            copy,
            shared,
            replay: None,
            probation: None,
        }
    }
}

impl<S, B> Rejected<S, B>
where
    S: Service<Request<B>> + Clone,
    S::Error: Into<BoxError>,
{
    /// The replay's response future once it is sent; `None` when the 401 goes back instead.
    #[allow(clippy::type_complexity)]
    fn poll_replay(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<(S::Future, Option<Probation>)>, BoxError>> {
        if self.replay.is_none() {
            let entry = match ready!(self.renew.as_mut().poll(cx)) {
                Ok(Some(entry)) => entry,
                Ok(None) => return Poll::Ready(Ok(None)),
                Err(error) => {
                    tracing::warn!(error = %crate::error::Chain(&error), "no new token after a 401; returning the 401");
                    return Poll::Ready(Ok(None));
                }
            };
            let (Some(copy), Some(service)) = (self.copy.take(), self.shared.replay_service())
            else {
                return Poll::Ready(Ok(None));
            };
            let Some(request) = copy.into_request(entry.header.clone()) else {
                tracing::warn!("a kept request no longer parses; returning the 401");
                return Poll::Ready(Ok(None));
            };
            let config = &self.shared.config;
            config.manager.count_replay(&config.client);
            self.probation = entry.on_probation().then(|| Probation {
                manager: self.shared.config.manager.clone(),
                slot: self.slot.clone(),
                id: entry.id,
            });
            self.replay = Some((service, request));
        }
        let Some((service, _)) = &mut self.replay else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        // The kept clone was never polled: make it ready first.
        ready!(service.poll_ready(cx)).map_err(Into::into)?;
        let Some((mut service, request)) = self.replay.take() else {
            return Poll::Ready(Err(polled_after_completion()));
        };
        Poll::Ready(Ok(Some((service.call(request), self.probation.take()))))
    }
}

fn polled_after_completion() -> BoxError {
    "tokenwarden response future polled after completion".into()
}
