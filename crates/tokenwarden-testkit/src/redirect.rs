//! `/redirect?to=URL`: a redirect to anywhere, to test clients that follow redirects.

use http::header::{ALLOW, HeaderValue, LOCATION};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, ReadBodyError, ResponseBody};
use crate::server::Disconnect;

/// Answers `GET` or `POST /redirect?to=<percent-encoded URL>` with `307 Temporary Redirect` and
/// `Location: <decoded to>`, and 400 when `to` is missing, empty or not a valid header value.
pub(crate) async fn handle(
    request: Request<Incoming>,
) -> Result<Response<ResponseBody>, Disconnect> {
    if request.method() != Method::GET && request.method() != Method::POST {
        let mut response = body::plain(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, POST"));
        return Ok(response);
    }
    let location = request.uri().query().and_then(location);
    // Read in full before answering, as the API does, so the connection stays usable for the
    // request the client sends next (a 307 makes it resend the same body).
    match body::read_limited(request.into_body()).await {
        Ok(_) => {}
        Err(ReadBodyError::TooLarge) => return Ok(body::plain(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(ReadBodyError::Transport) => return Err(Disconnect),
    }
    let Some(location) = location else {
        return Ok(body::plain(StatusCode::BAD_REQUEST));
    };
    let mut response = body::plain(StatusCode::TEMPORARY_REDIRECT);
    response.headers_mut().insert(LOCATION, location);
    Ok(response)
}

/// The first `to` parameter of a query, decoded, if it is non-empty and a valid header value.
/// It is sent as it is, not checked to be absolute, so tests may also try relative locations.
fn location(query: &str) -> Option<HeaderValue> {
    let (_, to) = form_urlencoded::parse(query.as_bytes()).find(|(key, _)| key == "to")?;
    if to.is_empty() {
        return None;
    }
    HeaderValue::from_str(&to).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_the_decoded_first_to_parameter() {
        assert_eq!(
            location("x=1&to=http%3A%2F%2F127.0.0.1%3A9%2Fapi%2Fa%3Fb%3Dc+d&to=other"),
            HeaderValue::from_str("http://127.0.0.1:9/api/a?b=c d").ok()
        );
    }

    #[test]
    fn location_refuses_missing_empty_and_header_breaking_values() {
        assert_eq!(location(""), None);
        assert_eq!(location("from=x"), None);
        assert_eq!(location("to="), None);
        assert_eq!(location("to=http%3A%2F%2Fa%0D%0AX-Injected%3A%201"), None);
    }
}
