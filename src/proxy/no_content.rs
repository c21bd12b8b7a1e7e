//! Answers that have no content whatever the upstream sends (RFC 9110
//! §6.4.1): a `204`, a `304`, and any answer to `HEAD`.
//!
//! Over HTTP/1.1 hyper reads such an answer as bodiless and the bytes an
//! upstream sends after its head never become a body. Over HTTP/2 the body
//! is whatever DATA frames the stream carries, and `h2` refuses them only
//! after a `HEAD`: an upstream's DATA on a `204` or `304` reached an
//! HTTP/2 app as that answer's body, and a `HEAD` answer with DATA reached
//! it as a reset stream after its head. So when such an answer's body has
//! not already ended, it is dropped unread (on HTTP/2 that resets the
//! upstream's stream, nothing else on the connection) and the app gets
//! the head with an empty body. A `204` also loses any `Content-Length`,
//! which no `204` may carry (RFC 9110 §8.6): hyper drops it on HTTP/1.1,
//! and passed on over HTTP/2 it announced a body that is not there.
//!
//! Cost per request: an enum and an integer comparison; nothing is done
//! for any other answer.

use http::StatusCode;

/// Whether an answer with `status` to a request that was (`head`) or was
/// not a `HEAD` has no content.
pub fn has_none(head: bool, status: StatusCode) -> bool {
    head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::has_none;
    use http::StatusCode;

    #[test]
    fn head_answers_204_and_304_have_none() {
        assert!(has_none(true, StatusCode::OK));
        assert!(has_none(false, StatusCode::NO_CONTENT));
        assert!(has_none(false, StatusCode::NOT_MODIFIED));
        for status in [200, 201, 205, 206, 404, 500] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(!has_none(false, status), "{status}");
        }
    }
}
