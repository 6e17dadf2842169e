//! What the layer keeps of a request so it can send it again after a 401.
//!
//! The request itself is consumed by the inner service, so every replayable request is copied
//! before it is sent. This is the largest cost the layer adds to a request, so the copy is made
//! as cheap as it can be: the URI's parts and every header name and value go into one byte buffer
//! (no reference count is touched and no value is allocated on its own), and that buffer comes
//! from a small per-thread stash instead of the allocator. It is parsed back only on a replay.

use std::mem;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderName};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Extensions, HeaderValue, Method, Request, Uri, Version};

/// A request as it was before the layer added its `Authorization` header. It lives in a box
/// taken from (and given back to) a small per-thread stash, so keeping it costs no allocation
/// and the response future carries one pointer.
pub(crate) struct Captured(Option<Box<Parts>>);

struct Parts {
    method: Method,
    version: Version,
    /// The URI's parts, then every header name and value, in `inline[..used]` when they fit
    /// (most requests), in `spill[..used]` when they do not (`spilled`); once a box has a
    /// `spill` buffer, it writes there first. Inline, the copy touches no memory but the box's
    /// own; either way it writes through a slice with its position in a register instead of
    /// growing a `Vec` field by field.
    inline: [u8; INLINE],
    spill: Vec<u8>,
    spilled: bool,
    used: usize,
    extensions: Extensions,
    body: Bytes,
}

/// Bytes of URI and headers a box holds in itself: a URI of 100 bytes and a few headers.
const INLINE: usize = 224;
/// Marks a URI part that is absent, where a length would be.
const ABSENT: u32 = u32::MAX;
/// The scheme, as one byte when it is one of the two that matter.
const NO_SCHEME: u8 = 0;
const HTTP: u8 = 1;
const HTTPS: u8 = 2;
const OTHER_SCHEME: u8 = 3;

impl Captured {
    /// The request with `body`, the bytes its body was buffered into.
    pub(crate) fn with_body<B>(request: &Request<B>, body: Bytes) -> Self {
        let mut captured = Captured::new(request);
        if let Some(parts) = captured.0.as_mut()
            && !body.is_empty()
        {
            parts.body = body;
        }
        captured
    }

    /// The request, whose body is empty (or sent as is and never replayed): no body is kept.
    /// (Taking no `Bytes` at all spares the hot path dropping an empty one through its vtable.)
    #[inline]
    pub(crate) fn new<B>(request: &Request<B>) -> Self {
        let mut parts = stash::take();
        // A box that once held a request too large for its own buffer keeps the larger buffer
        // and writes there first: a thread whose requests carry more headers than fit inline
        // (tracing headers, a user agent, cookies) then copies each one once, not twice.
        let spilled = !parts.spill.is_empty();
        let out = match spilled {
            true => &mut parts.spill[..],
            false => &mut parts.inline[..],
        };
        (parts.used, parts.spilled) = match write(request, out) {
            Some(used) => (used, spilled),
            None => (grow_and_write(request, &mut parts.spill), true),
        };
        parts.method = request.method().clone();
        parts.version = request.version();
        // A box from the stash holds no extensions and an empty body: most requests have
        // no extensions, and skipping the assignment skips dropping what it would replace.
        if !request.extensions().is_empty() {
            parts.extensions = request.extensions().clone();
        }
        Captured(Some(parts))
    }

    /// The request to send again, with `authorization` as its `Authorization` header; `None` if a
    /// part cannot be rebuilt exactly (a value the caller built unchecked), in which case nothing
    /// is replayed.
    pub(crate) fn into_request<B: From<Bytes>>(
        mut self,
        authorization: HeaderValue,
    ) -> Option<Request<B>> {
        let parts = self.0.as_mut()?;
        let mut request = Request::new(B::from(mem::take(&mut parts.body)));
        *request.method_mut() = mem::take(&mut parts.method);
        *request.version_mut() = parts.version;
        *request.extensions_mut() = mem::take(&mut parts.extensions);
        let bytes = match parts.spilled {
            false => &parts.inline[..],
            true => &parts.spill[..],
        };
        let mut rest = bytes.get(..parts.used)?;
        let (head, tail) = rest.split_first_chunk::<9>()?;
        rest = tail;
        let [scheme, a0, a1, a2, a3, p0, p1, p2, p3] = *head;
        let mut uri = http::uri::Parts::default();
        uri.scheme = match scheme {
            NO_SCHEME => None,
            HTTP => Some(Scheme::HTTP),
            HTTPS => Some(Scheme::HTTPS),
            _ => Some(Scheme::try_from(take(&mut rest)??).ok()?),
        };
        uri.authority = split(&mut rest, [a0, a1, a2, a3])?
            .map(Authority::try_from)
            .transpose()
            .ok()?;
        uri.path_and_query = split(&mut rest, [p0, p1, p2, p3])?
            .map(PathAndQuery::try_from)
            .transpose()
            .ok()?;
        *request.uri_mut() = Uri::from_parts(uri).ok()?;
        let map = request.headers_mut();
        while !rest.is_empty() {
            let (head, tail) = rest.split_first_chunk::<7>()?;
            rest = tail;
            let [n0, n1, v0, v1, v2, v3, sensitive] = *head;
            let (name, tail) = rest.split_at_checked(usize::from(u16::from_le_bytes([n0, n1])))?;
            rest = tail;
            let mut value = HeaderValue::from_bytes(split(&mut rest, [v0, v1, v2, v3])??).ok()?;
            value.set_sensitive(sensitive == 1);
            map.append(HeaderName::from_bytes(name).ok()?, value);
        }
        map.insert(AUTHORIZATION, authorization);
        Some(request)
    }
}

/// Writes what [`Captured::into_request`] reads back into `out`: the URI's parts and every
/// header, fixed-size fields first, then the text they describe. `None` if `out` is too small.
#[inline(always)]
fn write<B>(request: &Request<B>, out: &mut [u8]) -> Option<usize> {
    let mut out = Writer { out, at: 0 };
    let uri = request.uri();
    let authority = uri.authority().map(|a| a.as_str().as_bytes());
    let path = uri.path_and_query().map(|p| p.as_str().as_bytes());
    let scheme = match uri.scheme_str() {
        None => NO_SCHEME,
        Some("https") => HTTPS,
        Some("http") => HTTP,
        Some(_) => OTHER_SCHEME,
    };
    let mut head = [0; 9];
    head[0] = scheme;
    head[1..5].copy_from_slice(&len(authority).to_le_bytes());
    head[5..9].copy_from_slice(&len(path).to_le_bytes());
    out.put_fixed(&head)?;
    if scheme == OTHER_SCHEME {
        let other = uri.scheme_str().map(str::as_bytes);
        out.put_fixed(&len(other).to_le_bytes())?;
        out.put(other.unwrap_or_default())?;
    }
    out.put(authority.unwrap_or_default())?;
    out.put(path.unwrap_or_default())?;
    for (name, value) in request.headers() {
        let name = name.as_str().as_bytes();
        let mut head = [0; 7];
        // Lengths fit: hyper and every server cap a header name far below 64 KiB.
        head[..2].copy_from_slice(&(name.len() as u16).to_le_bytes());
        head[2..6].copy_from_slice(&len(Some(value.as_bytes())).to_le_bytes());
        head[6] = u8::from(value.is_sensitive());
        out.put_fixed(&head)?;
        out.put(name)?;
        out.put(value.as_bytes())?;
    }
    Some(out.at)
}

/// A request that does not fit the buffer: grows it to the size [`write`] needs, then writes.
#[cold]
#[inline(never)]
fn grow_and_write<B>(request: &Request<B>, bytes: &mut Vec<u8>) -> usize {
    #[cfg(test)]
    tests::GROWN.with(|grown| grown.set(grown.get() + 1));
    let uri = request.uri();
    let other_scheme = match uri.scheme_str() {
        None | Some("https" | "http") => 0,
        Some(other) => 4 + other.len(),
    };
    let uri_len = uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| 7 + name.as_str().len() + value.len())
        .sum();
    // Rounded up, so that the next requests of about this size fit too (see `Captured::new`).
    let needed = 9 + other_scheme + uri_len + headers;
    bytes.resize(needed.next_power_of_two().max(2 * INLINE), 0);
    // It fits now; were it not to, the capture would read back as nothing to replay.
    write(request, &mut bytes[..]).unwrap_or(0)
}

/// Writes through a slice whose length and position stay in registers.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    /// Writes a fixed-size field: the compiler stores it straight from registers.
    #[inline(always)]
    fn put_fixed<const N: usize>(&mut self, bytes: &[u8; N]) -> Option<()> {
        let end = self.at.checked_add(N)?;
        self.out.get_mut(self.at..end)?.copy_from_slice(bytes);
        self.at = end;
        Some(())
    }

    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.at.checked_add(bytes.len())?;
        copy(self.out.get_mut(self.at..end)?, bytes);
        self.at = end;
        Some(())
    }
}

/// `to.copy_from_slice(from)` for slices of equal length, without a call to `memcpy` for the
/// short parts a request is made of: 4 to 32 bytes take two overlapping loads and two
/// overlapping stores of 4, 8 or 16 bytes. Each part of the copy then branches on its length in
/// its own place, which a stream of similar requests repeats, where `memcpy` shares one set of
/// branches between every caller in the process. Fixed-size fields do not come here (see
/// [`Writer::put_fixed`]): copied this way they were first stored on the stack and read back.
#[inline(always)]
fn copy(to: &mut [u8], from: &[u8]) {
    debug_assert_eq!(to.len(), from.len());
    /// The first and last `N` bytes, for `N <= len <= 2 * N`: every byte is in one of them.
    #[inline(always)]
    fn pair<const N: usize>(to: &mut [u8], from: &[u8]) {
        let (Some(head), Some(tail)) = (from.first_chunk::<N>(), from.last_chunk::<N>()) else {
            return;
        };
        let (head, tail) = (*head, *tail);
        if let Some(t) = to.first_chunk_mut::<N>() {
            *t = head;
        }
        if let Some(t) = to.last_chunk_mut::<N>() {
            *t = tail;
        }
    }
    match from.len() {
        0 => {}
        1..4 => to.iter_mut().zip(from).for_each(|(t, f)| *t = *f),
        4..8 => pair::<4>(to, from),
        8..16 => pair::<8>(to, from),
        16..=32 => pair::<16>(to, from),
        _ => to.copy_from_slice(from),
    }
}

/// A part's length as written, or the mark of an absent part. A URI or a header value is far
/// shorter than 4 GiB: hyper and every server cap them in kilobytes.
#[inline]
fn len(part: Option<&[u8]>) -> u32 {
    part.map_or(ABSENT, |p| p.len() as u32)
}

/// Reads back what [`put`] wrote: `None` if the buffer is cut short, `Some(None)` for an absent part.
fn take<'a>(rest: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let (len, tail) = rest.split_first_chunk::<4>()?;
    *rest = tail;
    split(rest, *len)
}

/// Splits off a part whose length (or absence) was written separately.
fn split<'a>(rest: &mut &'a [u8], len: [u8; 4]) -> Option<Option<&'a [u8]>> {
    let len = u32::from_le_bytes(len);
    if len == ABSENT {
        return Some(None);
    }
    let (part, tail) = rest.split_at_checked(usize::try_from(len).ok()?)?;
    *rest = tail;
    Some(Some(part))
}

impl Drop for Captured {
    #[inline]
    fn drop(&mut self) {
        if let Some(parts) = self.0.take() {
            stash::give_back(parts);
        }
    }
}

/// The per-thread stash of boxes. A thread keeps at most [`stash::SPARE_PER_THREAD`] boxes whose
/// spill buffers hold at most [`stash::LARGEST_KEPT`] bytes; a box that does not fit (a request with
/// unusually large headers, or a full stash) goes back to the allocator. A box dropped on
/// another thread than the one that took it joins that thread's stash.
mod stash {
    use std::cell::{Cell, RefCell};

    use bytes::Bytes;
    use http::{Extensions, Method, Version};

    use super::Parts;

    pub(super) const SPARE_PER_THREAD: usize = 32;
    pub(super) const LARGEST_KEPT: usize = 4 * 1024;

    thread_local! {
        /// The box given back last.
        pub(super) static LAST: Cell<Option<Box<Parts>>> = const { Cell::new(None) };
        // Boxes, not values: the boxes themselves are what is reused.
        #[allow(clippy::vec_box)]
        pub(super) static SPARE: RefCell<Vec<Box<Parts>>> = const { RefCell::new(Vec::new()) };
    }

    #[inline]
    pub(super) fn take() -> Box<Parts> {
        // The last box given back first: a thread that sends one request at a time never
        // touches the list.
        if let Ok(Some(parts)) = LAST.try_with(Cell::take) {
            return parts;
        }
        SPARE
            .try_with(|spare| spare.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                Box::new(Parts {
                    method: Method::GET,
                    version: Version::default(),
                    inline: [0; super::INLINE],
                    spill: Vec::new(),
                    spilled: false,
                    used: 0,
                    extensions: Extensions::new(),
                    body: Bytes::new(),
                })
            })
    }

    #[inline]
    pub(super) fn give_back(mut parts: Box<Parts>) {
        if parts.spill.len() > LARGEST_KEPT {
            return;
        }
        // Nothing of the request outlives it in the stash but bytes of the buffer, which the
        // next request overwrites, as freed memory would hold them until reused.
        // (The method is overwritten by the next request; a body or extensions could hold on
        // to memory or to the caller's values, so they are let go now.)
        parts.used = 0;
        if !parts.extensions.is_empty() {
            parts.extensions.clear();
        }
        if !parts.body.is_empty() {
            parts.body = Bytes::new();
        }
        let parts = match LAST.try_with(|last| last.replace(Some(parts))) {
            Ok(None) | Err(_) => return,
            Ok(Some(parts)) => parts,
        };
        let _ = SPARE.try_with(move |spare| {
            if let Ok(mut spare) = spare.try_borrow_mut()
                && spare.len() < SPARE_PER_THREAD
            {
                if spare.capacity() == 0 {
                    spare.reserve_exact(SPARE_PER_THREAD);
                }
                spare.push(parts);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokenwarden_core::TokenParams;

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
        let captured = Captured::with_body(&original, Bytes::from_static(b"payload"));
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

    #[test]
    fn short_copies_copy_every_byte_of_every_length() {
        let source: Vec<u8> = (1..=80).collect();
        for len in 0..=source.len() {
            let mut out = vec![0; len];
            copy(&mut out, &source[..len]);
            assert_eq!(out, source[..len], "length {len}");
        }
    }

    #[test]
    fn every_form_of_uri_comes_back_as_it_was() {
        for text in [
            "https://api.example.com/v1/items?x=1&y=%20",
            "http://api.example.com",
            "http://127.0.0.1:8080/",
            "http://[::1]:9000/path",
            "https://user@host.example:443/a/b",
            "/relative/path?q",
            "api.example.com:443",
            "*",
            "custom+scheme://host/x",
        ] {
            let uri: Uri = text.parse().unwrap();
            let request = Request::get(uri.clone())
                .body(Full::<Bytes>::default())
                .unwrap();
            let replay: Request<Full<Bytes>> = Captured::new(&request)
                .into_request(HeaderValue::from_static("Bearer t"))
                .unwrap_or_else(|| panic!("{text} was not rebuilt"));
            assert_eq!(replay.uri(), &uri, "{text}");
            assert_eq!(replay.uri().to_string(), uri.to_string(), "{text}");
        }
    }

    #[test]
    fn large_headers_are_kept_whole_and_their_buffer_is_not_stashed() {
        let big = "x".repeat(3 * stash::LARGEST_KEPT);
        let request = Request::get("https://api.example.com/")
            .header("x-big", big.as_str())
            .method("PURGE")
            .body(Full::<Bytes>::default())
            .unwrap();
        for _ in 0..3 {
            let captured = Captured::new(&request);
            let replay: Request<Full<Bytes>> = captured
                .into_request(HeaderValue::from_static("Bearer t"))
                .unwrap();
            assert_eq!(replay.headers()["x-big"], big.as_str());
            assert_eq!(replay.method().as_str(), "PURGE");
        }
        // Only small buffers go back to the stash.
        let largest =
            stash::SPARE.with(|s| s.borrow().iter().map(|p| p.spill.len()).max().unwrap_or(0));
        assert!(largest <= stash::LARGEST_KEPT, "{largest}");
    }

    thread_local! {
        /// How often this thread's captures had to grow a buffer and write a request again.
        pub(super) static GROWN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn one_box_serves_requests_that_fit_in_it_and_requests_that_spill() {
        // Larger than the box's own buffer, small enough for the box to be stashed again.
        let spilling = "s".repeat(2 * INLINE);
        let grown_before = GROWN.get();
        for round in 0..6 {
            let value = if round % 2 == 0 {
                "small"
            } else {
                spilling.as_str()
            };
            let request = Request::get(format!("https://api.example.com/{round}"))
                .header("x-value", value)
                .body(Full::<Bytes>::default())
                .unwrap();
            let captured = Captured::new(&request);
            // Once a box has needed its larger buffer, it writes every request there, once.
            assert_eq!(
                captured.0.as_ref().map(|p| p.spilled),
                Some(round >= 1),
                "round {round}"
            );
            assert_eq!(
                GROWN.get() - grown_before,
                usize::from(round >= 1),
                "round {round}: grown once, at round 1"
            );
            let replay: Request<Full<Bytes>> = captured
                .into_request(HeaderValue::from_static("Bearer t"))
                .unwrap();
            assert_eq!(replay.uri(), request.uri(), "round {round}");
            assert_eq!(replay.headers()["x-value"], value, "round {round}");
        }
    }

    #[test]
    fn a_stashed_box_holds_nothing_of_its_last_request() {
        let mut request = Request::post("https://api.example.com/")
            .body(Full::<Bytes>::default())
            .unwrap();
        request
            .extensions_mut()
            .insert(TokenParams::new().scope("a"));
        // Two at once: the box given back last waits in its own slot, the other joins the list.
        let first = Captured::with_body(&request, Bytes::from_static(b"body"));
        let second = Captured::with_body(&request, Bytes::from_static(b"body"));
        drop((first, second));
        let last = stash::LAST.take().expect("the box was given back");
        let listed = stash::SPARE.with(|s| s.borrow_mut().pop().expect("the box was listed"));
        for parts in [last, listed] {
            assert_eq!(parts.used, 0);
            assert!(parts.body.is_empty());
            assert!(parts.extensions.is_empty());
        }
    }
}
