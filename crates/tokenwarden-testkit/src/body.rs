//! Response bodies and the small response builders every handler shares.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};

/// The body of every response the server sends.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// A body known in full, sent with `Content-Length`.
    Full(Full<Bytes>),
    /// A generated body of a given size, sent chunked.
    Large(LargeBody),
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Self::Full(full) => Pin::new(full).poll_frame(cx),
            Self::Large(large) => Pin::new(large).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(full) => full.is_end_stream(),
            Self::Large(large) => large.remaining == 0,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(full) => full.size_hint(),
            // Deliberately inexact so hyper uses chunked encoding instead of Content-Length.
            Self::Large(_) => SizeHint::default(),
        }
    }
}

/// `remaining` bytes of filler, produced in fixed-size chunks.
#[derive(Debug)]
pub(crate) struct LargeBody {
    remaining: usize,
    chunk: Bytes,
}

impl LargeBody {
    const CHUNK_SIZE: usize = 16 * 1024;

    pub(crate) fn new(len: usize) -> Self {
        Self {
            remaining: len,
            chunk: Bytes::from(vec![b'x'; Self::CHUNK_SIZE]),
        }
    }
}

impl Body for LargeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(Self::CHUNK_SIZE);
        self.remaining -= len;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A response with a complete body and the given content type.
pub(crate) fn full(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::Full(Full::new(body.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    full(status, "application/json", value.to_string())
}

/// A JSON response from the token endpoint, which must never be cached (RFC 6749 §5.1).
pub(crate) fn token_json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let mut response = json(status, value);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A small HTML page for a status, like the ones proxies and gateways send.
pub(crate) fn html_status(status: StatusCode) -> Response<ResponseBody> {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = status.as_u16();
    full(
        status,
        "text/html; charset=utf-8",
        format!(
            "<html><head><title>{code} {reason}</title></head><body><h1>{code} {reason}</h1></body></html>\n"
        ),
    )
}

/// An empty-bodied response for plain protocol errors (404, 405, 413).
pub(crate) fn plain(status: StatusCode) -> Response<ResponseBody> {
    full(
        status,
        "text/plain; charset=utf-8",
        status.canonical_reason().unwrap_or("error"),
    )
}

/// The most request body the server reads; larger bodies are answered with 413.
pub(crate) const REQUEST_BODY_LIMIT: usize = 1024 * 1024;

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum ReadBodyError {
    /// The body is larger than [`REQUEST_BODY_LIMIT`].
    TooLarge,
    /// The connection failed while reading.
    Transport,
}

/// Reads a request body in full, up to [`REQUEST_BODY_LIMIT`].
pub(crate) async fn read_limited(body: hyper::body::Incoming) -> Result<Bytes, ReadBodyError> {
    use http_body_util::BodyExt;

    match http_body_util::Limited::new(body, REQUEST_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ReadBodyError::TooLarge)
        }
        Err(_) => Err(ReadBodyError::Transport),
    }
}
