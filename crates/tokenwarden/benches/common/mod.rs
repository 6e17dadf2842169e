//! What both hot-path benchmarks send, and to what: the same request to a no-op service.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use tower::Service;

/// An inner service that answers at once: the benchmarks measure the middleware alone.
pub(crate) fn noop()
-> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::default()))
    })
}

/// A GET with one header and an empty body, built anew for every request as a caller would.
pub(crate) fn request(uri: &Uri) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(uri.clone())
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap()
}
