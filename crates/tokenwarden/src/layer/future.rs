use std::fmt;
use std::future::Future;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use http_body_util::combinators::Collect;
use pin_project_lite::pin_project;
use tokenwarden_core::{BoxError, TokenParams};
use tower_service::Service;

use super::capture::Captured;
use super::registry::ReplaySource;
use super::service::{
    HeaderFuture, Shared, acquire_header, invalidate_rejected, renew_after_rejection,
    set_authorization,
};

pin_project! {
    /// The response future of [`AccessTokenService`](super::AccessTokenService). On the hot path
    /// (a cached token) it is the inner service's future plus what it takes to act on a 401; every
    /// slower path (buffering a body, waiting for a token, renewing and replaying after a 401)
    /// runs in a boxed state machine, so the common future stays small and cheap to move.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        #[pin]
        kind: Kind<S, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        // Sent: with a cached token, watching the response for a 401 (`watch`), or untouched
        // (no `watch`).
        Sending {
            #[pin]
            future: S::Future,
            watch: Option<Watch>,
        },
        Cold {
            cold: Pin<Box<Cold<S, B>>>,
        },
    }
}

/// What a request sent with a cached token keeps, to act on a 401.
pub(crate) struct Watch {
    // The layer's id in the registry: its configuration is looked up only after a 401.
    pub(crate) layer: u64,
    // The id of the token that was sent, to invalidate exactly that token. (A request with
    // parameters of its own never takes this path, so the default parameters are implied.)
    pub(crate) sent: u64,
    // If the request can be replayed: the id of its service's replay source (see
    // [`registry`](super::registry)) and the request as it was.
    pub(crate) replay: Option<(NonZeroU64, Captured)>,
}

pin_project! {
    /// The slow paths, as one state machine: buffers a replayable body, waits for a token when
    /// none is cached, sends, and after a 401 renews the token and replays once.
    struct Cold<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        #[pin]
        state: State<S, B>,
        shared: Option<Arc<Shared>>,
        // Where a 401 takes the service to replay with from, if the request can be replayed.
        // (The slow paths hold it, as they hold the configuration: a request that waited for
        // its body or its token is replayed even if its service was dropped meanwhile.)
        replay_source: Option<Arc<ReplaySource<S>>>,
        // The (not yet ready) service to replay with, once a 401 asked for a replay.
        replay_service: Option<S>,
        // The request as it was before the token was added; present once the body is buffered.
        captured: Option<Captured>,
        // The id of the token that was sent, to invalidate exactly that token on a 401.
        sent: Option<u64>,
        params: Option<Box<TokenParams>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
        B: Body,
    {
        // Buffering the body so the request can be replayed.
        // The cold states keep their large parts boxed, so the future stays small on the hot path.
        Collecting {
            collect: Pin<Box<Collect<B>>>,
            parts: Option<Box<http::request::Parts>>,
            ready: Option<S>,
            cached: Option<(HeaderValue, u64)>,
        },
        // No token was cached: getting one before the first send.
        AwaitingToken {
            token: HeaderFuture,
            request: Option<Box<Request<B>>>,
            ready: Option<S>,
        },
        Sending {
            #[pin]
            future: S::Future,
        },
        // A 401 came back: getting a new token for the replay.
        Renewing {
            token: HeaderFuture,
            response: Option<Box<S::Response>>,
        },
        // A 401 came back to a request that cannot be replayed: invalidating, then returning it.
        Invalidating {
            invalidate: Pin<Box<dyn Future<Output = ()> + Send>>,
            response: Option<Box<S::Response>>,
        },
        ReplayReady {
            request: Option<Box<Request<B>>>,
        },
        Replaying {
            #[pin]
            future: S::Future,
        },
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Sending { watch: None, .. } => "passthrough",
            Kind::Sending { .. } => "sending",
            Kind::Cold { .. } => "cold",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
    B: Body,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        ResponseFuture {
            kind: Kind::Sending {
                future,
                watch: None,
            },
        }
    }

    #[inline]
    pub(crate) fn sending(future: S::Future, watch: Watch) -> Self {
        ResponseFuture {
            kind: Kind::Sending {
                future,
                watch: Some(watch),
            },
        }
    }

    pub(crate) fn awaiting_token(
        request: Request<B>,
        ready: S,
        shared: Arc<Shared>,
        replay: Option<(Arc<ReplaySource<S>>, Captured)>,
        token: HeaderFuture,
        params: Option<Box<TokenParams>>,
    ) -> Self {
        let (replay_source, captured) = replay.unzip();
        Self::cold(Cold {
            state: State::AwaitingToken {
                token,
                request: Some(Box::new(request)),
                ready: Some(ready),
            },
            shared: Some(shared),
            replay_source,
            replay_service: None,
            captured,
            sent: None,
            params,
        })
    }

    pub(crate) fn collecting(
        request: Request<B>,
        ready: S,
        replay_source: Arc<ReplaySource<S>>,
        shared: Arc<Shared>,
        cached: Option<(HeaderValue, u64)>,
        params: Option<Box<TokenParams>>,
    ) -> Self {
        let (parts, body) = request.into_parts();
        Self::cold(Cold {
            state: State::Collecting {
                collect: Box::pin(body.collect()),
                parts: Some(Box::new(parts)),
                ready: Some(ready),
                cached,
            },
            shared: Some(shared),
            replay_source: Some(replay_source),
            replay_service: None,
            captured: None,
            sent: None,
            params,
        })
    }

    fn cold(cold: Cold<S, B>) -> Self {
        ResponseFuture {
            kind: Kind::Cold {
                cold: Box::pin(cold),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let cold = match kind.as_mut().project() {
            KindProj::Cold { cold } => return cold.as_mut().poll(cx),
            KindProj::Sending { future, watch } => {
                // The response is converted first and then looked at where it lies, moved
                // once, into the result: each extra move of it costs on every request. (Looked
                // at before the conversion, its status was copied from a register into the
                // converted response, and the wider copy that followed stalled on it.)
                let poll: Poll<Self::Output> = future.poll(cx).map_err(Into::into);
                let rejected = matches!(&poll, Poll::Ready(Ok(response))
                    if response.status() == StatusCode::UNAUTHORIZED && watch.is_some());
                if !rejected {
                    return poll;
                }
                let (Poll::Ready(Ok(response)), Some(watch)) = (poll, watch.take()) else {
                    return Poll::Ready(Err(polled_after_completion()));
                };
                // The layer is gone only if every service built from it was dropped: nothing
                // is left to renew the token with, so the 401 goes back as it is.
                let Some(shared) = super::registry::find(watch.layer) else {
                    return Poll::Ready(Ok(response));
                };
                Cold::after_rejection(shared, watch, response)
            }
        };
        kind.set(Kind::Cold {
            cold: Box::pin(cold),
        });
        match kind.project() {
            KindProj::Cold { cold } => cold.as_mut().poll(cx),
            _ => Poll::Ready(Err(polled_after_completion())),
        }
    }
}

impl<S, B> Cold<S, B>
where
    S: Service<Request<B>> + Clone + Send + 'static,
    B: Body,
{
    /// A 401 came back to a request sent with a cached token: renew and replay, or, if the
    /// request cannot be replayed, invalidate the token and return the 401.
    #[cold]
    fn after_rejection(shared: Arc<Shared>, watch: Watch, response: S::Response) -> Self {
        let Watch {
            layer: _,
            sent,
            replay,
        } = watch;
        // The service to replay with is gone only if the service and all its clones were
        // dropped while this request was out: then the 401 goes back as it is.
        let (replay_service, captured) = replay
            .and_then(|(id, captured)| {
                let service = super::registry::replay_service::<S>(id)?;
                Some((service, captured))
            })
            .unzip();
        let state = if captured.is_some() {
            State::Renewing {
                token: renew_after_rejection(shared.clone(), None, sent),
                response: Some(Box::new(response)),
            }
        } else {
            State::Invalidating {
                invalidate: invalidate_rejected(shared.clone(), None, sent),
                response: Some(Box::new(response)),
            }
        };
        Cold {
            state,
            shared: Some(shared),
            replay_source: None,
            replay_service,
            captured,
            sent: Some(sent),
            params: None,
        }
    }
}

impl<S, B, ResBody> Future for Cold<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + From<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Collecting {
                    collect,
                    parts,
                    ready,
                    cached,
                } => {
                    let body = ready!(collect.as_mut().poll(cx))
                        .map_err(Into::into)?
                        .to_bytes();
                    let (Some(parts), Some(mut service)) = (parts.take(), ready.take()) else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let mut request = Request::from_parts(*parts, B::from(body.clone()));
                    *this.captured = Some(Captured::with_body(&request, body));
                    match cached.take() {
                        Some((header, id)) => {
                            set_authorization(&mut request, header);
                            *this.sent = Some(id);
                            let future = service.call(request);
                            this.state.set(State::Sending { future });
                        }
                        None => {
                            let Some(shared) = this.shared.clone() else {
                                return Poll::Ready(Err(polled_after_completion()));
                            };
                            let token = acquire_header(shared, this.params.as_deref().cloned());
                            this.state.set(State::AwaitingToken {
                                token,
                                request: Some(Box::new(request)),
                                ready: Some(service),
                            });
                        }
                    }
                }
                StateProj::AwaitingToken {
                    token,
                    request,
                    ready,
                } => {
                    let (header, id) = ready!(token.as_mut().poll(cx))?;
                    let (Some(request), Some(mut service)) = (request.take(), ready.take()) else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let mut request = *request;
                    set_authorization(&mut request, header);
                    *this.sent = Some(id);
                    let future = service.call(request);
                    this.state.set(State::Sending { future });
                }
                StateProj::Sending { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let (Some(shared), Some(sent)) = (this.shared.clone(), *this.sent) else {
                        return Poll::Ready(Ok(response));
                    };
                    if this.captured.is_some()
                        && let Some(source) = this.replay_source.take()
                    {
                        *this.replay_service = Some(source.service());
                        let token =
                            renew_after_rejection(shared, this.params.as_deref().cloned(), sent);
                        this.state.set(State::Renewing {
                            token,
                            response: Some(Box::new(response)),
                        });
                    } else {
                        let invalidate =
                            invalidate_rejected(shared, this.params.as_deref().cloned(), sent);
                        this.state.set(State::Invalidating {
                            invalidate,
                            response: Some(Box::new(response)),
                        });
                    }
                }
                StateProj::Renewing { token, response } => {
                    let result = ready!(token.as_mut().poll(cx));
                    let replay = match (result, this.captured.take()) {
                        (Ok((header, _)), Some(captured)) => captured.into_request(header),
                        (Err(error), _) => {
                            tracing::warn!(%error, "no new token after a 401; returning the 401");
                            None
                        }
                        (Ok(_), None) => None,
                    };
                    let Some(request) = replay else {
                        return Poll::Ready(
                            response
                                .take()
                                .map(|r| *r)
                                .ok_or_else(polled_after_completion),
                        );
                    };
                    if let Some(shared) = this.shared.as_ref() {
                        shared.manager.count_replay();
                    }
                    this.state.set(State::ReplayReady {
                        request: Some(Box::new(request)),
                    });
                }
                StateProj::Invalidating {
                    invalidate,
                    response,
                } => {
                    ready!(invalidate.as_mut().poll(cx));
                    return Poll::Ready(
                        response
                            .take()
                            .map(|r| *r)
                            .ok_or_else(polled_after_completion),
                    );
                }
                StateProj::ReplayReady { request } => {
                    // The replay service is a clone that was never polled: make it ready first.
                    let Some(service) = this.replay_service.as_mut() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    ready!(service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(request) = request.take() else {
                        return Poll::Ready(Err(polled_after_completion()));
                    };
                    let future = service.call(*request);
                    *this.replay_service = None;
                    this.state.set(State::Replaying { future });
                }
                StateProj::Replaying { future } => {
                    // A second 401 goes back to the caller as it is.
                    return future.poll(cx).map_err(Into::into);
                }
            }
        }
    }
}

fn polled_after_completion() -> BoxError {
    "tokenwarden response future polled after completion".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a request sent with a cached token keeps besides the inner future: four words, and no
    /// clone of anything (a clone of the inner service or an `Arc` would write a count shared by
    /// every request).
    #[test]
    fn a_request_keeps_four_words_to_act_on_a_401() {
        assert_eq!(std::mem::size_of::<Watch>(), 4 * std::mem::size_of::<u64>());
    }
}
