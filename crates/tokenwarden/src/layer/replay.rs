//! Which requests are kept so they can be sent again after a 401, and what is kept of them.

use std::future::Future;
use std::mem;
use std::pin::Pin;

use bytes::Bytes;
use http::header::HeaderName;
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
///
/// The URI and the headers are kept as text in [`CopyBuffers`] and parsed again only for a
/// replay: a copy of a `Uri` or a `HeaderValue` would write a reference count (shared by every
/// request on every core when the value is), and a value made from a string moves to the heap
/// at its first copy, so copying them costs far more than their bytes. The buffers go back to
/// the service once the response is in, for the next request to fill.
pub(crate) struct RequestCopy<B> {
    method: Method,
    version: Version,
    extensions: Extensions,
    body: B,
    buffers: Box<CopyBuffers>,
}

/// The text of a request copy: the URI, then each header's name and value, one after the
/// other, and where each ends.
#[derive(Default)]
pub(crate) struct CopyBuffers {
    text: Vec<u8>,
    uri_end: usize,
    headers: Vec<HeaderSpan>,
}

/// Where a header's name and value end in [`CopyBuffers::text`].
struct HeaderSpan {
    name_end: usize,
    value_end: usize,
    sensitive: bool,
}

impl CopyBuffers {
    /// Buffers larger than this are not kept for the next request.
    const KEEP_AT_MOST: usize = 16 * 1024;

    /// Whether these buffers are small enough to keep for another request.
    pub(crate) fn worth_keeping(&self) -> bool {
        self.text.capacity() <= Self::KEEP_AT_MOST
    }
}

impl<B> RequestCopy<B> {
    /// Copies `request`'s parts into `buffers` (emptied first).
    pub(crate) fn of<T>(request: &Request<T>, body: B, mut buffers: Box<CopyBuffers>) -> Self {
        let CopyBuffers {
            text,
            uri_end,
            headers: spans,
        } = &mut *buffers;
        text.clear();
        spans.clear();
        let uri = request.uri();
        if let Some(scheme) = uri.scheme_str() {
            text.extend_from_slice(scheme.as_bytes());
            text.extend_from_slice(b"://");
        }
        if let Some(authority) = uri.authority() {
            text.extend_from_slice(authority.as_str().as_bytes());
        }
        if let Some(path) = uri.path_and_query() {
            text.extend_from_slice(path.as_str().as_bytes());
        }
        *uri_end = text.len();
        for (name, value) in request.headers() {
            text.extend_from_slice(name.as_str().as_bytes());
            let name_end = text.len();
            text.extend_from_slice(value.as_bytes());
            spans.push(HeaderSpan {
                name_end,
                value_end: text.len(),
                sensitive: value.is_sensitive(),
            });
        }
        RequestCopy {
            method: request.method().clone(),
            version: request.version(),
            extensions: request.extensions().clone(),
            body,
            buffers,
        }
    }

    /// The buffers, for the next copy.
    pub(crate) fn into_buffers(self) -> Box<CopyBuffers> {
        self.buffers
    }

    /// The request again, with `authorization`; `None` if a part no longer parses (only a part
    /// that was built unchecked could fail).
    pub(crate) fn into_request(self, authorization: HeaderValue) -> Option<Request<B>> {
        let CopyBuffers {
            text,
            uri_end,
            headers: spans,
        } = &*self.buffers;
        let uri = Uri::try_from(&text[..*uri_end]).ok()?;
        let mut headers = HeaderMap::with_capacity(spans.len() + 1);
        let mut start = *uri_end;
        for span in spans {
            let name = HeaderName::from_bytes(&text[start..span.name_end]).ok()?;
            let mut value = HeaderValue::from_bytes(&text[span.name_end..span.value_end]).ok()?;
            value.set_sensitive(span.sensitive);
            headers.append(name, value);
            start = span.value_end;
        }
        headers.insert(http::header::AUTHORIZATION, authorization);
        let mut request = Request::new(self.body);
        *request.method_mut() = self.method;
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        *request.extensions_mut() = self.extensions;
        Some(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_gives_back_the_same_request_with_the_new_token() {
        for uri in [
            "https://api.example.com/v1/items?page=2&sort=desc",
            "http://127.0.0.1:8080",
            "/relative/path?q=1",
            "*",
        ] {
            let mut request = Request::builder()
                .method("PATCH")
                .uri(uri)
                .version(Version::HTTP_2)
                .header("accept", "application/json")
                .header("x-request-id", "0b6f2f8e")
                .header("x-multi", "one")
                .header("x-multi", "two")
                .header(http::header::AUTHORIZATION, "Bearer old")
                .body(())
                .unwrap();
            let mut secret = HeaderValue::from_static("s3cr3t");
            secret.set_sensitive(true);
            request.headers_mut().insert("x-secret", secret);
            request.extensions_mut().insert(7u32);

            // Buffers that held another request before are emptied first.
            let earlier = Request::get("https://earlier.example.com/a/much/longer/path")
                .header("x-earlier", "value")
                .body(())
                .unwrap();
            let used = RequestCopy::of(&earlier, (), Box::default()).into_buffers();
            let copy = RequestCopy::of(&request, "body", used);
            let replay = copy
                .into_request(HeaderValue::from_static("Bearer new"))
                .unwrap();
            assert_eq!(replay.method(), "PATCH");
            assert_eq!(replay.uri(), request.uri(), "{uri}");
            assert_eq!(replay.version(), Version::HTTP_2);
            assert_eq!(replay.headers()["accept"], "application/json");
            assert_eq!(replay.headers()["x-request-id"], "0b6f2f8e");
            let multi: Vec<_> = replay.headers().get_all("x-multi").iter().collect();
            assert_eq!(multi, ["one", "two"]);
            assert_eq!(
                replay
                    .headers()
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .count(),
                1
            );
            assert_eq!(replay.headers()[http::header::AUTHORIZATION], "Bearer new");
            assert!(replay.headers()["x-secret"].is_sensitive());
            assert_eq!(replay.extensions().get::<u32>(), Some(&7));
            assert_eq!(*replay.body(), "body");
        }
    }
}
